"""Deep Q-Network: the discrete-action expert trainer (CartPole-v1, Acrobot-v1, MountainCar-v0).

DQN (Mnih et al. 2015, Nature 518; arXiv 1312.5602) regresses Q(s, a) on the one-step target
r + gamma (1 - d) max_a' Q_target(s', a') (Alg. 1, the squared TD error; `--double-q` takes a' from the online
network, van Hasselt et al. 2016, arXiv 1509.06461), with an epsilon-greedy behaviour policy whose epsilon decays
linearly, a replay memory, and a periodically copied target network. Follows cleanrl/dqn.py; the per-env settings
that produced the shipped experts are the rl-baselines3-zoo ones, given as flags in the README.

MountainCar-v0's reward is -1 per step until the flag, which plain DQN rarely reaches in few steps: `--shaping-coef`
adds the potential-based term gamma Phi(s') - Phi(s) with Phi the cart's mechanical energy (Ng, Harada, Russell
1999), which leaves the optimal policy unchanged. Evaluation and expert.json always use the true reward.

`--save-expert` writes experts/<env-id>/ (expert.json, demos.npz, policy.pt; see README "Expert artefacts").
`--resume` continues from checkpoints/<env-id>__<exp-name>__<seed>/checkpoint.pt.
"""

import json
import os
import platform
import random
import shlex
import signal
import sys
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "cleanil"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """record the first episode of every evaluation to videos/<run_name>/ (MuJoCo on a headless machine: MUJOCO_GL=egl)"""
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 50_000
    """total environment steps of the experiment"""
    eval_frequency: int = 5_000
    """evaluate the greedy policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/); read for the normalized score,
    written by --save-expert"""

    # DQN (defaults: rl-baselines3-zoo's CartPole-v1 settings)
    learning_rate: float = 2.3e-3
    """the learning rate of the optimizer"""
    buffer_size: int = 100_000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    target_network_frequency: int = 10
    """copy the Q-network into the target network every this many environment steps"""
    batch_size: int = 64
    """the batch size of samples from the replay memory"""
    start_e: float = 1.0
    """the starting epsilon for exploration"""
    end_e: float = 0.04
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.16
    """the fraction of `total_timesteps` it takes from start_e to end_e"""
    learning_starts: int = 1_000
    """environment steps before learning starts"""
    train_frequency: int = 256
    """train every this many environment steps"""
    gradient_steps: int = 128
    """gradient steps each time the network is trained"""
    hidden_size: int = 256
    """width of the two hidden layers of the Q-network"""
    double_q: bool = False
    """pick the bootstrap action with the online network (Double DQN)"""
    max_grad_norm: float = 10.0
    """gradient clipping norm (as in stable-baselines3's DQN)"""
    shaping_coef: float = 0.0
    """MountainCar-v0 only: scale of the potential-based energy shaping used for training (0: true reward)"""

    # checkpoints and expert artefacts
    checkpoint_frequency: int = 50_000
    """save a resumable checkpoint every this many environment steps (0: never)"""
    checkpoint_dir: Optional[str] = None
    """checkpoint folder (default: checkpoints/<env-id>__<exp-name>__<seed>/, git-ignored)"""
    resume: bool = False
    """continue from the checkpoint in checkpoint_dir"""
    save_expert: bool = False
    """at the end, write expert.json, demos.npz and policy.pt to expert_path"""
    overwrite: bool = False
    """allow --save-expert to replace an existing expert folder"""
    expert_eval_episodes: int = 50
    """greedy episodes that measure the expert return (and random-policy episodes) for expert.json"""
    num_demo_episodes: int = 25
    """greedy expert episodes stored in demos.npz"""
    expert_snapshot: Literal["best", "final"] = "best"
    """which Q-network --save-expert ships: `best` (highest eval return seen) or `final`"""


# ------------------------------------------------------------------------------------------------------------ DQN
class QNetwork(nn.Module):
    def __init__(self, obs_dim, num_actions, hidden_size):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(obs_dim, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, num_actions),
        )

    def forward(self, obs):
        return self.network(obs)


class ReplayBuffer:
    """Transitions in preallocated tensors on the training device; uniform sampling without leaving it."""

    def __init__(self, obs_dim, size, device):
        self.observations = torch.zeros(size, obs_dim, device=device)
        self.actions = torch.zeros(size, dtype=torch.long, device=device)
        self.rewards = torch.zeros(size, device=device)
        self.next_observations = torch.zeros(size, obs_dim, device=device)
        self.terminations = torch.zeros(size, device=device)
        self.size, self.pos, self.full = size, 0, False

    def add(self, obs, action, reward, next_obs, termination):
        for storage, value in zip(self.tensors(), (obs, action, reward, next_obs, termination)):
            storage[self.pos] = torch.as_tensor(value, dtype=storage.dtype)
        self.pos = (self.pos + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, batch_size):
        index = torch.randint(0, self.size if self.full else self.pos, (batch_size,), device=self.observations.device)
        return [storage[index] for storage in self.tensors()]

    def tensors(self):
        return self.observations, self.actions, self.rewards, self.next_observations, self.terminations

    def state_dict(self):
        filled = self.size if self.full else self.pos
        # copy=True: a slice saved as it is would drag the whole preallocated storage (all buffer_size rows) into the file
        return {"tensors": [t[:filled].to("cpu", copy=True) for t in self.tensors()], "pos": self.pos, "full": self.full}

    def load_state_dict(self, state):
        for storage, saved in zip(self.tensors(), state["tensors"]):
            storage[: len(saved)] = saved.to(storage.device)
        self.pos, self.full = state["pos"], state["full"]


def linear_schedule(start_e, end_e, duration, t):
    return max(end_e, start_e + (end_e - start_e) * t / duration)


def mountain_car_potential(obs, gamma_scale):
    """Phi(s): the cart's mechanical energy, from the dynamics v' = v + 0.001 F - 0.0025 cos(3x) (gravity term)."""
    position, velocity = obs[..., 0], obs[..., 1]
    return gamma_scale * (0.0025 / 3 * np.sin(3 * position) + 0.5 * velocity**2)


def td_loss(q_network, target_network, batch, gamma, double_q):
    """Alg. 1: (r + gamma (1 - d) max_a' Q_target(s', a') - Q(s, a))^2 (Huber-free, as cleanrl/dqn.py)."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        next_q = target_network(next_obs)
        if double_q:
            next_value = next_q.gather(1, q_network(next_obs).argmax(1, keepdim=True)).squeeze(1)
        else:
            next_value = next_q.max(1).values
        td_target = rewards + gamma * (1 - terminations) * next_value
    q_values = q_network(obs).gather(1, actions[:, None]).squeeze(1)
    return F.mse_loss(q_values, td_target), q_values


# ----------------------------------------------------------------------------------------------------- evaluation
def evaluate(act, env, num_episodes, seed):
    """Returns of num_episodes episodes of act (obs batch -> action batch), the env reseeded at seed each call."""
    returns = []
    for episode in range(num_episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(act(obs[None])[0])
            done = terminated or truncated
        returns.append(info["episode"]["r"])
    return np.array(returns, dtype=np.float64)


# ------------------------------------------------------------------------------- expert artefacts (--save-expert)
def rollout_episodes(act, env, num_episodes, seed):
    """Whole episodes of act as the demos.npz arrays of DESIGN.md (first axis = transition)."""
    keys = ("observations", "actions", "rewards", "next_observations", "terminations", "truncations")
    data, episode_starts, returns = {key: [] for key in keys}, [], []
    obs, _ = env.reset(seed=seed)
    episode_starts.append(0)
    while len(returns) < num_episodes:
        action = act(obs[None])[0]
        next_obs, reward, terminated, truncated, info = env.step(action)
        for key, value in zip(keys, (obs, action, reward, next_obs, terminated, truncated)):
            data[key].append(value)
        obs = next_obs
        if terminated or truncated:
            returns.append(info["episode"]["r"])
            obs, _ = env.reset()
            if len(returns) < num_episodes:
                episode_starts.append(len(data["observations"]))
    demos = {key: np.array(value) for key, value in data.items()}
    demos["observations"], demos["next_observations"] = (
        demos["observations"].astype(np.float32),
        demos["next_observations"].astype(np.float32),
    )
    demos["episode_starts"] = np.array(episode_starts, dtype=np.int64)
    return demos, np.array(returns)


def save_expert(expert_dir, args, q_network, env_id, device, training, overwrite):
    """expert.json + demos.npz + policy.pt: the plain MLP obs -> Q-values whose argmax is the expert's action."""
    expert_dir = Path(expert_dir)
    if expert_dir.exists() and any(expert_dir.iterdir()) and not overwrite:
        sys.exit(f"error: {expert_dir} already exists; pass --overwrite to replace it.")
    expert_dir.mkdir(parents=True, exist_ok=True)
    env = make_env(env_id, args.seed + 20_000)

    @torch.no_grad()
    def act(obs):
        return q_network(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(-1).cpu().numpy()

    expert_returns = evaluate(act, env, args.expert_eval_episodes, args.seed + 20_000)
    random_returns = evaluate(
        lambda obs: np.array([env.action_space.sample()]), env, args.expert_eval_episodes, args.seed + 30_000
    )
    demos, demo_returns = rollout_episodes(act, env, args.num_demo_episodes, args.seed + 40_000)
    np.savez_compressed(expert_dir / "demos.npz", **demos)
    policy = q_network.network
    torch.save({key: value.cpu() for key, value in policy.state_dict().items()}, expert_dir / "policy.pt")
    shaping = f", trained with MountainCar energy shaping (--shaping-coef {args.shaping_coef})" if args.shaping_coef else ""
    info = {
        "env_id": env_id,
        "algorithm": "dqn",
        "training_steps": training["global_step"],
        "snapshot_step": training["snapshot_step"],
        "training_wall_time_s": round(training["wall_time"], 1),
        "seed": args.seed,
        "command": training["commands"],
        "versions": package_versions(),
        "expert_return_mean": float(expert_returns.mean()),
        "expert_return_std": float(expert_returns.std()),
        "expert_episodes": len(expert_returns),
        "random_return_mean": float(random_returns.mean()),
        "random_return_std": float(random_returns.std()),
        "random_episodes": len(random_returns),
        "observation_shape": list(env.observation_space.shape),
        "action_shape": list(env.action_space.shape),
        "action_space": "discrete",
        "num_actions": int(env.action_space.n),
        "policy": {
            "file": "policy.pt",
            "layers": [int(policy[0].in_features), args.hidden_size, args.hidden_size, int(policy[-1].out_features)],
            "activation": "relu",
            "output": "argmax",
        },
        "demos": {
            "file": "demos.npz",
            "episodes": len(demo_returns),
            "transitions": len(demos["rewards"]),
            "return_mean": float(demo_returns.mean()),
            "policy": "deterministic",
        },
        "training": f"DQN on the environment reward{shaping}; "
        + json.dumps({k: v for k, v in asdict(args).items() if k not in ("track", "wandb_entity")}),
    }
    (expert_dir / "expert.json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"expert saved to {expert_dir}: return {expert_returns.mean():.1f} +/- {expert_returns.std():.1f} "
        f"(random {random_returns.mean():.1f}), {len(demo_returns)} demo episodes"
    )


# ----------------------------------------- shared infrastructure (identical in every script; tests/test_shared_blocks.py)
def make_env(env_id, seed, capture_video=False, run_name="", video_every=1):
    try:
        env = gym.make(env_id, render_mode="rgb_array" if capture_video else None)
    except gym.error.Error as error:
        sys.exit(f"error: unknown environment id {env_id!r} ({error}); use a registered Gymnasium id such as Hopper-v4.")
    if capture_video:
        try:
            env.reset(seed=seed)
            env.render()
        except Exception as error:  # each renderer fails its own way (mujoco.FatalError without a GL context, pygame, EGL)
            sys.exit(
                f"error: --capture-video cannot render {env_id} ({' '.join(str(error).split())[:200]}); on a headless "
                f"machine set MUJOCO_GL=egl (or osmesa), or drop --capture-video."
            )
        # the first episode of every evaluation (the eval env runs video_every = eval_episodes episodes each time)
        env = gym.wrappers.RecordVideo(env, f"videos/{run_name}", episode_trigger=lambda episode: episode % video_every == 0)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env.action_space.seed(seed)
    return env


# a random return that expert.json lacks: the mean of this many uniformly random episodes (>= 50, as DESIGN.md asks),
# from one fixed seed, so that every run and every seed of a benchmark divides by the same constant
RANDOM_RETURN_EPISODES = 50


RANDOM_RETURN_SEED = 30_000


def load_expert_info(expert_dir, env, required):
    """expert.json as a dict, checked against the env; None if absent and not required. A demos-only folder needs just
    observation_shape and action_shape (README, "Your own demonstrations"): without env_id it is the env's, without
    expert_return_mean the demos' mean return, without random_return_mean a uniformly random policy's, measured on
    every run and never written back by a run (`cleanil/demos.py --complete` stores it)."""
    info_path = Path(expert_dir) / "expert.json"
    if not info_path.exists():
        if required:
            sys.exit(f"error: no expert at {info_path}; {missing_expert_hint(env.spec.id, expert_dir)}")
        return None
    command = expert_command(env.spec.id, expert_dir)
    try:
        info = json.loads(info_path.read_text())
        obs_shape, action_shape = tuple(info["observation_shape"]), tuple(info["action_shape"])
        returns = {key: float(info[key]) for key in ("expert_return_mean", "random_return_mean") if key in info}
    except (ValueError, KeyError, TypeError) as error:
        sys.exit(f"error: {info_path} is malformed ({error!r}); regenerate it with `{command} --overwrite`.")
    if obs_shape != env.observation_space.shape or action_shape != env.action_space.shape:
        sys.exit(
            f"error: {info_path} is for observations {obs_shape} and actions {action_shape}, but {env.spec.id} has "
            f"{env.observation_space.shape} and {env.action_space.shape}; regenerate it with `{command} --overwrite`."
        )
    if "expert_return_mean" not in returns:
        returns["expert_return_mean"], num_episodes = demos_mean_return(expert_dir, command)
        print(
            f"{info_path} has no expert_return_mean: the demos' mean return, {returns['expert_return_mean']:.2f} over "
            f"{num_episodes} episodes, stands in for it.",
            file=sys.stderr,
        )
    if "random_return_mean" not in returns:
        returns["random_return_mean"] = float(random_policy_returns(env.spec.id).mean())
        print(
            f"{info_path} has no random_return_mean: a uniformly random policy's mean return, "
            f"{returns['random_return_mean']:.2f} over {RANDOM_RETURN_EPISODES} episodes, stands in for it (measured on "
            f"every run; `{demos_command(env.spec.id, expert_dir)} --complete` stores it).",
            file=sys.stderr,
        )
    expert_return, random_return = returns["expert_return_mean"], returns["random_return_mean"]
    if not np.isfinite([expert_return, random_return]).all() or expert_return == random_return:
        sys.exit(
            f"error: {info_path} gives expert_return_mean {expert_return} and random_return_mean {random_return}, "
            f"which define no normalized score (R - R_random) / (R_expert - R_random); regenerate it with "
            f"`{command} --overwrite`."
        )
    return {"env_id": env.spec.id, **info, **returns}


def demos_mean_return(expert_dir, command):
    """(mean return, number) of the whole episodes in demos.npz: the expert return of a folder whose expert.json has none."""
    path = Path(expert_dir) / "demos.npz"
    if not path.exists():
        sys.exit(
            f"error: {Path(expert_dir) / 'expert.json'} has no expert_return_mean and there is no {path} to take the "
            f"demos' mean return from; add one, or regenerate the folder with `{command} --overwrite`."
        )
    try:
        with np.load(path) as data:
            rewards, starts = data["rewards"].astype(np.float64), data["episode_starts"]
        if len(starts) == 0 or starts[0] != 0 or (np.diff(starts) <= 0).any() or starts[-1] >= len(rewards):
            raise ValueError(f"episode_starts {starts[:5]}... are not increasing indices from 0 below {len(rewards)}")
        returns = np.add.reduceat(rewards, starts)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        sys.exit(f"error: {path} is corrupt or malformed ({error!r}); regenerate it with `{command} --overwrite`.")
    return float(returns.mean()), len(returns)


def random_policy_returns(env_id):
    """Returns of a uniformly random policy in RANDOM_RETURN_EPISODES episodes, on an env of its own (the run's envs and
    their random streams stay untouched), with a progress bar: the random return of a folder whose expert.json has none."""
    env = make_env(env_id, RANDOM_RETURN_SEED)
    returns = []
    for episode in tqdm(range(RANDOM_RETURN_EPISODES), desc=f"{env_id}: random_return_mean", file=sys.stderr, mininterval=2.0):
        env.reset(seed=RANDOM_RETURN_SEED if episode == 0 else None)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
        returns.append(info["episode"]["r"])
    env.close()
    return np.array(returns, dtype=np.float64)


def expert_command(env_id, expert_dir=None):
    """The command that creates expert_dir: the env's trainer for the default experts/<env-id>/ (no --expert-path
    needed), cleanil/demos.py for a folder of one's own (your demonstrations, converted or recorded from a policy)."""
    command = demos_command(env_id, expert_dir)
    if "--expert-path" in command:
        return f"{command} --from-<minari|d4rl|sb3|npz|policy> <source>"
    trainer = "sac.py" if env_id not in ("CartPole-v1", "Acrobot-v1", "MountainCar-v0") else "dqn.py"
    return f"python cleanil/{trainer} --env-id {env_id} --save-expert"


def demos_command(env_id, expert_dir=None):
    """cleanil/demos.py writing expert_dir (the default experts/<env-id>/ needs no --expert-path), before its source flag."""
    command = f"python cleanil/demos.py --env-id {env_id}"
    if expert_dir is not None and Path(expert_dir).resolve() != Path(__file__).resolve().parent.parent / "experts" / env_id:
        command += f" --expert-path {shlex.quote(str(expert_dir))}"
    return command


SHIPPED_EXPERTS = (
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "Pendulum-v1",
    "InvertedPendulum-v4",
    "Hopper-v4",
    "HalfCheetah-v4",
    "Walker2d-v4",
    "Ant-v4",
    "Humanoid-v4",
)


def missing_expert_hint(env_id, expert_dir=None):
    """What a missing expert costs: the shipped ones come with the repository, a folder of one's own (--expert-path) is
    built by cleanil/demos.py, and any other env's default folder needs a training run."""
    command = expert_command(env_id, expert_dir)
    if "demos.py" in command:
        shipped = (
            f"cleanil ships one at experts/{env_id} (drop --expert-path to use it); " if env_id in SHIPPED_EXPERTS else ""
        )
        return (
            f"{shipped}build this one from your demonstrations with `{command}`, or write its demos.npz and an "
            f'expert.json with observation_shape and action_shape by hand (README, "Your own demonstrations").'
        )
    if env_id in SHIPPED_EXPERTS:
        return f"cleanil ships it: restore it with `git checkout -- experts/{env_id}`, or point --expert-path at a copy."
    if "dqn.py" in command:
        return f"create it with `{command}` (50,000 DQN steps: minutes on a CPU)."
    return (
        f"create it with `{command}`: its 1,000,000 SAC steps take 2-3 hours on one CPU core "
        f"(110-150 steps/s measured with --bf16), and --total-timesteps shortens it (weaker expert)."
    )


def normalized_score(episode_return, expert_info):
    """(R - R_random) / (R_expert - R_random), the normalization of DESIGN.md; NaN without an expert."""
    if expert_info is None:
        return float("nan")
    random_return = expert_info["random_return_mean"]
    return (episode_return - random_return) / (expert_info["expert_return_mean"] - random_return)


def package_versions():
    import importlib.metadata as metadata

    return {name: metadata.version(name) for name in ("torch", "gymnasium", "mujoco", "numpy", "tyro")}


def log_metrics(track, metrics, step):
    """The one place a script reports metrics: to wandb under --track (wandb.init ran in main), else nowhere."""
    if track:
        import wandb

        wandb.log({key: float(value) for key, value in metrics.items()}, step=step)


def exit_if_non_finite(values, message):
    """Stop with one sentence (DESIGN.md, "Bad input") once a loss is NaN or infinite: past it, the NaN reaches every
    weight and the run only wastes its budget."""
    if not all(torch.isfinite(value) for value in values):
        sys.exit(message)


def checkpoint_state(saved):
    """What a checkpoint stores of each object in `saved`: a module's or optimizer's state_dict, a bare tensor's CPU
    copy (log alpha), each under its key, so save and load walk the same listing."""
    return {
        key: value.detach().cpu() if isinstance(value, torch.Tensor) else value.state_dict() for key, value in saved.items()
    }


def load_checkpoint_state(saved, checkpoint):
    """The inverse of checkpoint_state: every object in `saved` takes back its state from `checkpoint`, in place."""
    for key, value in saved.items():
        if isinstance(value, torch.Tensor):
            with torch.no_grad():
                value.copy_(checkpoint[key])
        else:
            value.load_state_dict(checkpoint[key])


def write_eval_row(run_dir, row):
    """Append one evaluation to eval.csv, flushed at once so a killed run keeps what it measured."""
    path = Path(run_dir) / "eval.csv"
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(f"{value:.10g}" if isinstance(value, float) else str(value) for value in row.values()) + "\n")


def hardware_info(device, bf16=False):
    """The device, its name, the thread count and the precision of a run, for summary.json."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "precision": "bf16-autocast" if bf16 else "fp32",
    }


def write_summary(run_dir, args, eval_rows, wall_time, sps, hardware=None):
    """summary.json: args, final and best scores, wall time, mean SPS, versions, and the device/threads/precision used."""
    scores = [row["normalized_score"] for row in eval_rows]
    summary = {
        "args": asdict(args),
        **(hardware or {}),
        "final_return": eval_rows[-1]["eval_return_mean"],
        "final_normalized_score": scores[-1],
        "best_normalized_score": max(scores) if not np.isnan(scores).all() else float("nan"),
        "total_wall_time_s": wall_time,
        "mean_sps": sps,
        "versions": package_versions(),
    }
    # strict JSON has no NaN (a score without expert.json): null instead, which every JSON parser reads
    summary = json.loads(json.dumps(summary), parse_constant=lambda constant: None)
    path = Path(run_dir) / "summary.json"
    path.with_suffix(".json.tmp").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    os.replace(path.with_suffix(".json.tmp"), path)  # atomic: a run stopped while writing never leaves half a file


if __name__ == "__main__":
    args = tyro.cli(Args)
    for name in (
        "total_timesteps",
        "eval_frequency",
        "eval_episodes",
        "batch_size",
        "buffer_size",
        "train_frequency",
        "gradient_steps",
        "target_network_frequency",
        "hidden_size",
        "expert_eval_episodes",
        "num_demo_episodes",
    ):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
    checkpoint_dir = Path(args.checkpoint_dir or f"checkpoints/{args.env_id}__{args.exp_name}__{args.seed}")
    checkpoint = None
    if args.resume:
        if not (checkpoint_dir / "checkpoint.pt").exists():
            sys.exit(
                f"error: --resume found no checkpoint at {checkpoint_dir / 'checkpoint.pt'}; start the run without --resume."
            )
        checkpoint = torch.load(checkpoint_dir / "checkpoint.pt", weights_only=False)
    run_name = checkpoint["run_name"] if checkpoint else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    env = make_env(args.env_id, args.seed)
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        sys.exit(f"error: dqn.py needs discrete actions but {args.env_id} has {env.action_space}; use cleanil/sac.py.")
    if args.shaping_coef and args.env_id != "MountainCar-v0":
        sys.exit(f"error: --shaping-coef is defined for MountainCar-v0 only, not {args.env_id}; drop the flag.")
    expert_info = load_expert_info(expert_dir, env, required=False)
    obs_dim = int(np.prod(env.observation_space.shape))
    run_dir = Path("runs") / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            config=vars(args),
            name=run_name,
            save_code=True,
            id=run_name,
            resume="allow",
        )

    q_network = QNetwork(obs_dim, env.action_space.n, args.hidden_size).to(device)
    target_network = QNetwork(obs_dim, env.action_space.n, args.hidden_size).to(device)
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    rb = ReplayBuffer(obs_dim, args.buffer_size, device)
    # the state a checkpoint holds, listed once (the buffer too: DQN's is small)
    saved_state = {"q_network": q_network, "target_network": target_network, "optimizer": optimizer, "rb": rb}

    start_step, wall_offset, eval_rows, commands, best_q = 0, 0.0, [], [], {}
    if checkpoint:
        try:
            load_checkpoint_state(saved_state, checkpoint)
        except (KeyError, RuntimeError, ValueError) as error:
            sys.exit(
                f"error: {checkpoint_dir / 'checkpoint.pt'} does not fit these arguments "
                f"({' '.join(str(error).split())[:240]}); "
                f"resume with the arguments of the run that wrote it, or start without --resume."
            )
        start_step, wall_offset, eval_rows, commands, best_q = (
            checkpoint[k] for k in ("global_step", "wall_time", "eval_rows", "commands", "best_q")
        )
        random.setstate(checkpoint["python_rng"])
        np.random.set_state(checkpoint["numpy_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        # a killed run may have evaluated past its checkpoint: those steps run again, so eval.csv restarts from the
        # checkpoint's rows
        (run_dir / "eval.csv").unlink(missing_ok=True)
        for row in eval_rows:
            write_eval_row(run_dir, row)
        print(f"resumed {run_name} at step {start_step} from {checkpoint_dir}")
    commands.append(" ".join(["python"] + sys.argv))

    @torch.no_grad()
    def act_greedy(obs):
        return q_network(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(-1).cpu().numpy()

    def run_evaluation(global_step):
        returns = evaluate(act_greedy, eval_env, args.eval_episodes, args.seed + 10_000)
        wall_time = wall_offset + time.time() - start_time
        row = {
            "global_step": global_step,
            "eval_return_mean": float(returns.mean()),
            "eval_return_std": float(returns.std()),
            "normalized_score": normalized_score(float(returns.mean()), expert_info),
            "wall_time": wall_time,
            "sps": (global_step - start_step) / max(time.time() - start_time, 1e-9),
        }
        if not eval_rows or row["eval_return_mean"] > max(r["eval_return_mean"] for r in eval_rows):
            best_q.update(step=global_step, state={k: v.clone() for k, v in q_network.state_dict().items()})
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        log_metrics(
            args.track, {"eval/return": row["eval_return_mean"], "eval/normalized_score": row["normalized_score"]}, global_step
        )
        progress.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    def save_checkpoint(global_step):
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = checkpoint_state(saved_state)
        state.update(
            global_step=global_step,
            run_name=run_name,
            eval_rows=eval_rows,
            commands=commands,
            best_q=best_q,
            wall_time=wall_offset + time.time() - start_time,
            python_rng=random.getstate(),
            numpy_rng=np.random.get_state(),
            torch_rng=torch.get_rng_state(),
            args=asdict(args),
        )
        torch.save(state, checkpoint_dir / "checkpoint.pt.tmp")
        os.replace(checkpoint_dir / "checkpoint.pt.tmp", checkpoint_dir / "checkpoint.pt")  # atomic: a kill never corrupts it

    # SIGINT (Ctrl-C) and SIGTERM (a session's end, a cluster's preemption) finish the step, checkpoint, and exit
    stop_signals = []
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda signum, frame: stop_signals.append(signum))

    start_time = time.time()
    hardware = hardware_info(device)
    print(
        f"{run_name}: {hardware['device']} ({hardware['device_name']}), {hardware['threads']} thread(s), "
        f"{hardware['precision']}",
        file=sys.stderr,
    )
    progress = tqdm(total=args.total_timesteps, initial=start_step, file=sys.stderr, desc=run_name, mininterval=2.0)
    if start_step == 0:
        run_evaluation(0)
    obs, _ = env.reset(seed=args.seed + start_step)
    for global_step in range(start_step + 1, args.total_timesteps + 1):
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
        if random.random() < epsilon:
            action = env.action_space.sample()
        else:
            action = act_greedy(obs[None])[0]
        next_obs, reward, terminated, truncated, info = env.step(action)
        if args.shaping_coef:
            # potential-based shaping: F = gamma Phi(s') - Phi(s), with Phi(terminal) = 0
            next_potential = 0.0 if terminated else mountain_car_potential(next_obs, args.shaping_coef)
            reward = reward + args.gamma * next_potential - mountain_car_potential(obs, args.shaping_coef)
        # bootstrap through time-limit truncations: only a true termination zeroes the target
        rb.add(obs, action, reward, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            log_metrics(
                args.track,
                {
                    "charts/episodic_return": info["episode"]["r"],
                    "charts/episodic_length": info["episode"]["l"],
                    "charts/epsilon": epsilon,
                },
                global_step,
            )
            obs, _ = env.reset()

        if global_step > args.learning_starts and global_step % args.train_frequency == 0:
            for _ in range(args.gradient_steps):
                loss, q_values = td_loss(q_network, target_network, rb.sample(args.batch_size), args.gamma, args.double_q)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(q_network.parameters(), args.max_grad_norm)
                optimizer.step()
            exit_if_non_finite([loss], f"error: non-finite TD loss at step {global_step}; lower --learning-rate.")
            sps = (global_step - start_step) / (time.time() - start_time)
            log_metrics(
                args.track, {"losses/td_loss": loss, "losses/q_values": q_values.mean(), "charts/SPS": sps}, global_step
            )
        if global_step > args.learning_starts and global_step % args.target_network_frequency == 0:
            target_network.load_state_dict(q_network.state_dict())
        progress.update(1)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            run_evaluation(global_step)
        if (
            args.checkpoint_frequency and (global_step % args.checkpoint_frequency == 0 or global_step == args.total_timesteps)
        ) or stop_signals:
            save_checkpoint(global_step)
        if stop_signals:
            progress.close()
            print(
                f"stopped by {signal.Signals(stop_signals[0]).name} at step {global_step}: evaluations so far in "
                f"{run_dir / 'eval.csv'}, "
                f"checkpoint in {checkpoint_dir}; continue with the same command plus --resume.",
                file=sys.stderr,
            )
            sys.exit(128 + stop_signals[0])
    progress.close()

    wall_time = wall_offset + time.time() - start_time
    mean_sps = (args.total_timesteps - start_step) / max(time.time() - start_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, hardware)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    if args.save_expert:
        if args.expert_snapshot == "best":
            q_network.load_state_dict(best_q["state"])
        snapshot_step = best_q["step"] if args.expert_snapshot == "best" else args.total_timesteps
        save_expert(
            expert_dir,
            args,
            q_network,
            args.env_id,
            device,
            {
                "global_step": args.total_timesteps,
                "snapshot_step": snapshot_step,
                "wall_time": wall_time,
                "commands": commands,
            },
            args.overwrite,
        )
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
