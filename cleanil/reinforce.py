"""REINFORCE: the Monte Carlo policy gradient, the reference from which the lecture derives every policy-gradient method.

REINFORCE (Williams 1992, Machine Learning 8:229-256, "Simple statistical gradient-following algorithms") ascends
grad J(theta) = E[sum_t grad log pi_theta(a_t | s_t) (Psi_t - b(s_t))] (the episodic REINFORCE of Williams' Sec. 5,
a baseline b as in his Sec. 4), estimated from whole episodes of the current policy. The lecture derives two weights
Psi_t, and both are here: first the whole episode's return G_0 = sum_t gamma^t r_t at every step (`episode_returns`,
`--no-reward-to-go`), then, by default, the reward-to-go G_t = sum_{t' >= t} gamma^{t'-t} r_{t'} (`rewards_to_go`,
Sutton & Barto 2018, Sec. 13.3; causality drops the rewards before t, which a_t cannot change: with gamma = 1 the
expectation is unchanged and only their noise goes; the gamma^t factor of Sutton & Barto's box is dropped, as in
common practice). `--baseline` subtracts a learned state value V_phi(s_t) regressed on Psi_t (`value_loss`,
Sec. 13.4; any function of s_t leaves the estimator unbiased), and the advantages of a batch are standardised
(`--norm-adv`: the centring acts as a constant baseline, the scaling as a per-batch step size). With `--track`,
`charts/grad_variance` is the variance across a batch's episodes of the single-episode gradient estimates
(`episode_gradient_variance`), the quantity reward-to-go and the baseline reduce. Each update
uses `--num-episodes` complete episodes, one per environment of a gymnasium vector env; a categorical policy for
discrete actions, a diagonal Gaussian with a state-independent log std for continuous ones (`reinforce_loss`).

No expert is needed: the env's reward drives learning. expert.json, when present, only gives the normalized score.
`--total-timesteps` counts the environment transitions the updates learn from; an env that finishes its episode
early idles (its steps are masked out and not counted) until the batch's longest episode ends.
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
from typing import Optional

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
    total_timesteps: int = 100_000
    """total environment transitions learned from"""
    eval_frequency: int = 10_000
    """evaluate the deterministic policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/); read only for the normalized score"""

    # REINFORCE
    num_episodes: int = 8
    """complete episodes per policy update, collected in parallel (one per vector env)"""
    gamma: float = 0.99
    """the discount factor gamma of the returns"""
    reward_to_go: bool = True
    """weight grad log pi(a_t|s_t) by the reward-to-go G_t; off, by the whole episode's return G_0 (the lecture's first)"""
    learning_rate: float = 3e-3
    """the learning rate of the policy's Adam optimizer"""
    baseline: bool = False
    """subtract a learned state-value baseline V(s_t), regressed on the returns, from the returns (G_t or G_0)"""
    value_learning_rate: float = 1e-3
    """the learning rate of the value baseline's Adam optimizer"""
    value_iterations: int = 25
    """full-batch gradient steps on the value baseline per update"""
    norm_adv: bool = True
    """standardise the advantages (returns minus baseline) of each batch"""
    hidden_size: int = 64
    """width of the two hidden layers of the policy and of the value network"""


# ------------------------------------------------------------------------------------------------------ REINFORCE
def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    """Orthogonal initialisation, as cleanrl/ppo.py: a near-uniform initial policy (std 0.01 on the last layer)."""
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim, out_dim, hidden_size, out_std):
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden_size)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden_size, hidden_size)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden_size, out_dim), std=out_std),
    )


class Policy(nn.Module):
    """pi_theta(a|s): categorical over logits, or N(mu_theta(s), diag exp(2 log_std)) with a state-independent log_std."""

    def __init__(self, obs_dim, action_space, hidden_size):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        out_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.network = mlp(obs_dim, out_dim, hidden_size, out_std=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(out_dim))

    def distribution(self, obs):
        out = self.network(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Independent(torch.distributions.Normal(out, self.log_std.exp().expand_as(out)), 1)

    def log_prob(self, obs, actions):
        return self.distribution(obs).log_prob(actions)

    def deterministic_action(self, obs):
        out = self.network(obs)
        return out.argmax(-1) if self.discrete else out


def rewards_to_go(rewards, dones, gamma):
    """G_t = r_t + gamma (1 - done_t) G_{t+1} backwards over time ([T, num_envs] tensors): the discounted reward-to-go
    of each step within its own episode; done_t (termination or time-limit truncation) closes the episode at t."""
    returns = torch.zeros_like(rewards)
    future = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        future = rewards[t] + gamma * (1.0 - dones[t].float()) * future
        returns[t] = future
    return returns


def episode_returns(rewards, dones, gamma):
    """G_0 = sum_{t'} gamma^{t'-t_0} r_{t'} over the episode that holds step t, repeated at each of its steps ([T, num_envs]
    tensors): the full-trajectory weight of the lecture's first estimator, grad J = E[sum_t grad log pi(a_t|s_t) G_0].
    Episodes are delimited as in `rewards_to_go`: done_t closes the episode at t, the next step opens a new one."""
    starts = rewards_to_go(rewards, dones, gamma)  # G_t, which is G_0 at each episode's first step
    returns = torch.empty_like(starts)
    current = starts[0]
    for t in range(len(rewards)):
        if t > 0:
            current = torch.where(dones[t - 1].bool(), starts[t], current)
        returns[t] = current
    return returns


def reinforce_loss(log_probs, advantages):
    """Williams' estimator: -1/N sum_t log pi(a_t|s_t) A_t, A_t = Psi_t - b(s_t) held constant (Psi_t = G_t or G_0); its
    gradient is the sample mean of grad log pi(a_t|s_t) A_t over the batch's N transitions."""
    return -(log_probs * advantages.detach()).mean()


def episode_gradient_variance(log_probs, weights, episode_ids, parameters):
    """tr Cov_i[g_i], g_i = sum_{t in episode i} grad_theta log pi(a_t|s_t) Psi_t: the sample variance across the batch's
    episodes of the single-episode policy-gradient estimates (the lecture's estimator with N = 1), summed over the
    parameters. One backward pass per episode; log_probs keeps its graph for the update's own backward pass."""
    parameters = list(parameters)
    estimates = []
    for episode in episode_ids.unique():
        in_episode = episode_ids == episode
        g_i = torch.autograd.grad((log_probs[in_episode] * weights[in_episode].detach()).sum(), parameters, retain_graph=True)
        estimates.append(torch.cat([grad.flatten() for grad in g_i]))
    return torch.stack(estimates).var(0).sum()


def value_loss(values, returns):
    """Baseline regression: 1/2 mean (V_phi(s_t) - Psi_t)^2 on the estimator's own Monte Carlo weight (no bootstrapping)."""
    return 0.5 * F.mse_loss(values, returns)


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


def exit_on_stop_signals(run_dir):
    """SIGINT (Ctrl-C) and SIGTERM (a session's end, a cluster's preemption) end a run that has no --resume at once, with
    one line and exit status 128 + signal as a shell reports it; eval.csv gains whole rows only, so it stays readable."""

    def stop(signum, frame):
        tqdm.write(
            f"stopped by {signal.Signals(signum).name}: evaluations so far in {Path(run_dir) / 'eval.csv'}; "
            f"{Path(__file__).name} has no --resume, so rerun the command to start over.",
            file=sys.stderr,
        )
        sys.exit(128 + signum)

    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, stop)


if __name__ == "__main__":
    args = tyro.cli(Args)
    for name in ("total_timesteps", "eval_frequency", "eval_episodes", "num_episodes", "value_iterations", "hidden_size"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / run_name

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    if not isinstance(eval_env.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        sys.exit(
            f"error: reinforce.py supports Discrete and Box actions, but {args.env_id} has {eval_env.action_space}; pick "
            f"another env."
        )
    expert_info = load_expert_info(expert_dir, eval_env, required=False)
    # next-step autoreset (gymnasium 1.x): the step after an episode's last one only resets that env; it falls in the
    # masked-out tail below, so no final observation is ever needed (REINFORCE never bootstraps)
    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: make_env(args.env_id, args.seed + i) for i in range(args.num_episodes)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    exit_on_stop_signals(run_dir)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = Policy(obs_dim, envs.single_action_space, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    if args.baseline:
        value_network = mlp(obs_dim, 1, args.hidden_size, out_std=1.0).to(device)
        value_optimizer = torch.optim.Adam(value_network.parameters(), lr=args.value_learning_rate)
    if not policy.discrete:
        low, high = envs.single_action_space.low, envs.single_action_space.high
    eval_rows = []

    @torch.no_grad()
    def act_deterministic(obs):
        action = policy.deterministic_action(torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1)).cpu().numpy()
        return action if policy.discrete else np.clip(action.reshape((len(obs), *low.shape)), low, high)

    def run_evaluation(global_step):
        returns = evaluate(act_deterministic, eval_env, args.eval_episodes, args.seed + 10_000)
        wall_time = time.time() - start_time
        row = {
            "global_step": global_step,
            "eval_return_mean": float(returns.mean()),
            "eval_return_std": float(returns.std()),
            "normalized_score": normalized_score(float(returns.mean()), expert_info),
            "wall_time": wall_time,
            "sps": global_step / max(wall_time, 1e-9),
        }
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        log_metrics(
            args.track, {"eval/return": row["eval_return_mean"], "eval/normalized_score": row["normalized_score"]}, global_step
        )
        progress.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    start_time = time.time()
    hardware = hardware_info(device)
    print(
        f"{run_name}: {hardware['device']} ({hardware['device_name']}), {hardware['threads']} thread(s), "
        f"{hardware['precision']}",
        file=sys.stderr,
    )
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    global_step, update = 0, 0
    while global_step < args.total_timesteps:
        update += 1
        # collect one complete episode per env; `alive` masks each env's steps after its episode ended
        obs, _ = envs.reset(seed=args.seed if update == 1 else None)
        alive = np.ones(args.num_episodes, dtype=bool)
        batch_obs, batch_actions, batch_rewards, batch_dones, batch_valid = [], [], [], [], []
        while alive.any():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1)
            with torch.no_grad():
                action = policy.distribution(obs_t).sample()
            action_np = action.cpu().numpy()
            # the Gaussian's sample is clipped for the env only; its log-prob stays that of the unclipped sample
            obs, reward, terminated, truncated, _ = envs.step(action_np if policy.discrete else np.clip(action_np, low, high))
            done = terminated | truncated
            for storage, value in zip(
                (batch_obs, batch_actions, batch_rewards, batch_dones, batch_valid),
                (obs_t, action, reward, done, alive.copy()),
            ):
                storage.append(value)
            alive &= ~done
        rewards = torch.as_tensor(np.array(batch_rewards), dtype=torch.float32, device=device)  # [T, num_episodes]
        valid = torch.as_tensor(np.array(batch_valid), device=device)
        dones = torch.as_tensor(np.array(batch_dones), device=device)
        returns = (rewards_to_go if args.reward_to_go else episode_returns)(rewards, dones, args.gamma)[valid]
        b_obs, b_actions = torch.stack(batch_obs)[valid], torch.stack(batch_actions)[valid]
        episode_ids = torch.arange(args.num_episodes, device=device).expand_as(valid)[valid]

        advantages = returns
        if args.baseline:
            with torch.no_grad():
                advantages = returns - value_network(b_obs).squeeze(-1)
        log_probs = policy.log_prob(b_obs, b_actions)
        if args.track and args.num_episodes > 1:
            # on the weights before --norm-adv, whose rescaling to unit std would hide the very scale the estimators differ
            # in; one backward pass per episode, so only when logged
            grad_variance = episode_gradient_variance(log_probs, advantages, episode_ids, policy.parameters()).item()
        if args.norm_adv and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        loss = reinforce_loss(log_probs, advantages)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if args.baseline:
            # fit V after the policy step, so that A_t never uses a baseline fitted on the very returns it centres
            for _ in range(args.value_iterations):
                v_loss = value_loss(value_network(b_obs).squeeze(-1), returns)
                value_optimizer.zero_grad(set_to_none=True)
                v_loss.backward()
                value_optimizer.step()
        exit_if_non_finite([loss], f"error: non-finite REINFORCE loss at update {update}; lower --learning-rate.")

        num_steps = len(returns)
        global_step += num_steps
        # the last batch may pass the budget: the bar's total grows to the steps run instead of becoming a bare counter
        progress.total = max(progress.total, global_step)
        progress.update(num_steps)
        stats = {
            "losses/policy_loss": loss.detach(),
            "charts/episodic_return": (rewards * valid).sum(0).mean(),
            "charts/episodic_length": num_steps / args.num_episodes,
            "charts/SPS": global_step / (time.time() - start_time),
        }
        if args.baseline:
            stats["losses/value_loss"] = v_loss.detach()
        if args.track and args.num_episodes > 1:
            stats["charts/grad_variance"] = grad_variance
        log_metrics(args.track, stats, global_step)
        crossed_eval_step = global_step // args.eval_frequency > (global_step - num_steps) // args.eval_frequency
        if crossed_eval_step or global_step >= args.total_timesteps:
            run_evaluation(global_step)
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = global_step / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, hardware)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    envs.close()
    eval_env.close()
    if args.track:
        wandb.finish()
