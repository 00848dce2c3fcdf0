"""DAgger: Dataset Aggregation, imitation by querying the expert on the states the learner itself visits.

DAgger (Ross, Gordon, Bagnell 2011, "A Reduction of Imitation Learning and Structured Prediction to No-Regret Online
Learning", arXiv 1011.0686, Algorithm 3.1) fixes behavioural cloning's compounding errors: each round i rolls out the
mixture pi_i = beta_i pi* + (1 - beta_i) pi_hat_i, labels every visited state with the expert's action pi*(s),
aggregates these pairs into one dataset D and retrains the learner on all of D (Follow-the-Leader, Sec. 3-4).
Map from Algorithm 3.1 to this file:
  "Initialize D <- {}; pi_hat_1"          round 0: D = the shipped expert demos (`load_demos`; the paper's first
                                           iteration with beta_1 = 1 is exactly a set of expert trajectories),
                                           pi_hat_1 trained on them (behavioural cloning)
  "pi_i = beta_i pi* + (1-beta_i) pi_hat_i" `beta_schedule`; the mixture is drawn per step in the rollout loop
  "Sample T-step trajectories using pi_i" --steps-per-round environment steps per round, the env reset at its start
  "D_i = {(s, pi*(s))}"                    `load_expert_policy` rebuilds the shipped expert from expert.json alone
                                           and labels every visited state, whoever acted
  "D <- D u D_i"                           the round's pairs appended to the preallocated dataset tensors
  "Train classifier pi_hat_{i+1} on D"     `train_policy`: --epochs-per-round epochs of maximum likelihood
                                           (`bc_loss`) over the whole of D, warm-started from pi_hat_i
  "Return best pi_hat_i on validation"     every evaluation is logged; summary.json keeps the best normalized score
The learner is a categorical policy (discrete actions) or a diagonal Gaussian with a state-independent std
(continuous actions); it acts deterministically (argmax / mean) in rollouts and evaluation, and sees observations
standardized with the expert demos' statistics. `charts/expert_agreement` is, per round, the fraction of the visited
states on which pi_hat_i's action matches pi*'s: equal actions (discrete), or every action coordinate within
--agreement-tolerance half action ranges (continuous; `charts/expert_action_mse` is logged as well).
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
    total_timesteps: Optional[int] = None
    """environment steps of all rollouts; if set, it replaces --rounds by total_timesteps / steps_per_round"""
    eval_frequency: int = 1_000
    """evaluate the deterministic learner every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/): demos, policy, normalization"""
    num_expert_trajectories: int = 10
    """expert demo episodes in the round-0 dataset (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th transition of each demo episode, from a random offset (1: all)"""

    # DAgger
    rounds: int = 10
    """DAgger rounds after round 0 (the demos): each rolls out pi_i, aggregates and retrains"""
    steps_per_round: int = 1_000
    """environment steps rolled out with the mixture policy pi_i per round (all are labelled by the expert)"""
    beta_schedule: Literal["linear", "exponential"] = "linear"
    """how the expert's share beta_i of the mixture policy decays over rounds (beta_0 = 1: the demos)"""
    beta_rampdown_rounds: int = 5
    """linear schedule: beta_i = max(0, 1 - i / beta_rampdown_rounds)"""
    beta_decay: float = 0.5
    """exponential schedule: beta_i = beta_decay ** i (the paper's beta_i = p^(i-1))"""
    epochs_per_round: int = 10
    """passes over the whole aggregated dataset D when retraining the learner each round"""
    min_updates_per_round: int = 1_000
    """at least this many gradient steps per round: early rounds hold few pairs, so 10 epochs alone under-train"""
    batch_size: int = 256
    """minibatch size of the supervised updates"""
    learning_rate: float = 3e-4
    """the learning rate of the Adam optimizer"""
    hidden_size: int = 256
    """width of the learner's two hidden layers"""
    agreement_tolerance: float = 0.1
    """continuous actions: a learner action agrees with the expert's if every coordinate is within this many half
    action ranges of it"""


# --------------------------------------------------------------------------------------------------------- DAgger
class ExpertPolicy(nn.Module):
    """The shipped expert pi*, rebuilt from expert.json["policy"]: argmax(mlp(s)), or tanh(mlp(s)) * scale + bias."""

    def __init__(self, spec):
        super().__init__()
        layers, sizes = [], spec["layers"]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), {"relu": nn.ReLU, "tanh": nn.Tanh}[spec["activation"]]()]
        self.mlp = nn.Sequential(*layers[:-1])
        self.output = spec["output"]
        if self.output == "tanh":
            self.register_buffer("action_scale", torch.tensor(spec["action_scale"], dtype=torch.float32))
            self.register_buffer("action_bias", torch.tensor(spec["action_bias"], dtype=torch.float32))
        elif self.output != "argmax":
            raise ValueError(f"unknown policy output {self.output!r}")

    def forward(self, obs):
        if self.output == "argmax":
            return self.mlp(obs).argmax(-1)
        return torch.tanh(self.mlp(obs)) * self.action_scale + self.action_bias


def load_expert_policy(expert_dir, info, device):
    """pi* from policy.pt and the layer sizes in expert.json, without importing the trainer that wrote it."""
    command = expert_command(info["env_id"], expert_dir)
    if "policy" not in info:
        sys.exit(
            f"error: {Path(expert_dir) / 'expert.json'} describes no expert policy, which dagger.py alone of the scripts "
            f"needs (it asks the expert to label every state it visits); record the demos from a policy in cleanil's "
            f"format with `{demos_command(info['env_id'], expert_dir)} --from-policy <policy.pt> --overwrite`, which "
            f"copies it into the folder, or imitate these demos with a script that needs none (bc.py, gail.py, ...)."
        )
    try:
        path = Path(expert_dir) / info["policy"]["file"]
        expert = ExpertPolicy(info["policy"])
    except (KeyError, TypeError, ValueError) as error:
        sys.exit(
            f"error: {Path(expert_dir) / 'expert.json'} does not describe the expert policy ({error!r}); "
            f"regenerate it with `{command} --overwrite`."
        )
    if not path.exists():
        sys.exit(
            f"error: no expert policy at {path}, which DAgger queries on every visited state; "
            f"regenerate the expert with `{command} --overwrite`."
        )
    num_outputs = info.get("num_actions") or int(np.prod(info["action_shape"]))
    try:
        if expert.mlp[0].in_features != int(np.prod(info["observation_shape"])) or expert.mlp[-1].out_features != num_outputs:
            raise ValueError("layer sizes do not match the observation and action shapes")
        expert.mlp.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, ValueError, OSError) as error:
        sys.exit(
            f"error: {path} does not match the policy described in expert.json ({type(error).__name__}); "
            f"regenerate the expert with `{command} --overwrite`."
        )
    return expert.to(device).eval()


class CategoricalPolicy(nn.Module):
    """pi_hat(a|s) = softmax(logits(s)) over discrete actions; deterministic action = argmax."""

    def __init__(self, obs_dim, num_actions, hidden_size, obs_mean, obs_std):
        super().__init__()
        self.logits = nn.Sequential(
            nn.Linear(obs_dim, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, num_actions),
        )
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))

    def log_prob(self, obs, actions):
        logits = self.logits((obs - self.obs_mean) / self.obs_std)
        return logits.log_softmax(-1).gather(-1, actions[..., None]).squeeze(-1)

    def deterministic_action(self, obs):
        return self.logits((obs - self.obs_mean) / self.obs_std).argmax(-1)


class GaussianPolicy(nn.Module):
    """pi_hat(a|s) = N(mu(s), diag(sigma^2)) with a learned state-independent sigma; deterministic action = mu,
    clipped to the action box."""

    def __init__(self, obs_dim, action_dim, hidden_size, obs_mean, obs_std, action_low, action_high):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Linear(obs_dim, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, action_dim),
        )
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))

    def log_prob(self, obs, actions):
        mean = self.mean((obs - self.obs_mean) / self.obs_std)
        return torch.distributions.Normal(mean, self.log_std.exp()).log_prob(actions).sum(-1)

    def deterministic_action(self, obs):
        return torch.clamp(self.mean((obs - self.obs_mean) / self.obs_std), self.action_low, self.action_high)


def beta_schedule(round_index, schedule, rampdown_rounds, decay):
    """beta_i, the expert's share of the mixture pi_i = beta_i pi* + (1 - beta_i) pi_hat_i (Alg. 3.1). Round 0 (the
    demos) is the paper's first iteration with beta_1 = 1; `exponential` is the paper's beta_i = p^(i-1) (Sec. 3),
    shifted to our 0-based rounds; `linear` ramps from 1 down to 0 at round rampdown_rounds."""
    if schedule == "linear":
        return max(0.0, 1.0 - round_index / rampdown_rounds)
    return decay**round_index


def bc_loss(policy, obs, expert_actions):
    """Alg. 3.1 "train classifier pi_hat_{i+1} on D": the negative log-likelihood -E_D[log pi_hat(pi*(s)|s)]
    (cross-entropy for discrete actions, Gaussian NLL for continuous ones)."""
    return -policy.log_prob(obs, expert_actions).mean()


def train_policy(policy, optimizer, observations, expert_actions, epochs, batch_size, min_updates=0):
    """epochs passes of minibatch bc_loss over the whole aggregated dataset D (more if that is fewer than min_updates
    gradient steps); returns the last epoch's mean loss."""
    batches_per_epoch = -(-len(observations) // batch_size)
    for _ in range(max(epochs, -(-min_updates // batches_per_epoch))):
        losses = []
        for index in torch.randperm(len(observations), device=observations.device).split(batch_size):
            loss = bc_loss(policy, observations[index], expert_actions[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    return torch.stack(losses).mean()


def expert_agreement(learner_actions, expert_actions, tolerance):
    """Fraction of states where pi_hat's action matches pi*'s: equal (integer actions), or every coordinate within
    `tolerance` (a per-dimension tensor) of it (continuous actions)."""
    if not torch.is_floating_point(learner_actions):
        return (learner_actions == expert_actions).float().mean()
    return ((learner_actions - expert_actions).abs() <= tolerance).all(-1).float().mean()


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


def load_demos(expert_dir, env, num_trajectories, subsample_frequency, seed, keys):
    """The first num_trajectories demo episodes, every subsample_frequency-th transition from a random offset per
    episode (as GAIL's subsampled demos, Ho & Ermon 2016); only `keys` are read from demos.npz, and float16 arrays
    (a large env's demos stored small, DESIGN.md) come back as float32, the precision the networks compute in."""
    path, command = Path(expert_dir) / "demos.npz", expert_command(env.spec.id, expert_dir)
    if not path.exists():
        sys.exit(f"error: no expert demos at {path}; create them with `{command}`.")
    if num_trajectories < 1 or subsample_frequency < 1:
        sys.exit(
            f"error: --num-expert-trajectories ({num_trajectories}) and --subsample-frequency ({subsample_frequency}) must "
            f"be >= 1."
        )
    try:
        with np.load(path) as data:
            missing = [key for key in ("episode_starts", "rewards", *keys) if key not in data.files]
            if missing:
                sys.exit(
                    f"error: {path} has no {', '.join(missing)} (it holds {', '.join(data.files) or 'nothing'}), which "
                    f"this script reads; regenerate it with `{command} --overwrite`."
                )
            starts, length = data["episode_starts"], len(data["rewards"])
            arrays = {key: data[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        sys.exit(f"error: {path} is corrupt or malformed ({error!r}); regenerate it with `{command} --overwrite`.")
    if (
        starts.ndim != 1
        or not np.issubdtype(starts.dtype, np.integer)
        or len(starts) == 0
        or starts[0] != 0
        or (np.diff(starts) <= 0).any()
        or starts[-1] >= length
    ):
        sys.exit(
            f"error: {path} holds episode_starts that are not increasing indices from 0 below its {length} transitions; "
            f"regenerate it with `{command} --overwrite`."
        )
    if num_trajectories > len(starts):
        sys.exit(
            f"error: --num-expert-trajectories {num_trajectories} asks for more trajectories than the {len(starts)} "
            f"shipped in {path}; pass at most {len(starts)}, or regenerate the expert with `{command} "
            f"--num-demo-episodes {num_trajectories} --overwrite`."
        )
    action_shape = () if isinstance(env.action_space, gym.spaces.Discrete) else env.action_space.shape
    expected = {
        "observations": env.observation_space.shape,
        "next_observations": env.observation_space.shape,
        "actions": action_shape,
    }
    for key, shape in expected.items():
        if key in arrays and (arrays[key].shape[1:] != shape or len(arrays[key]) != length):
            sys.exit(
                f"error: {path} holds {key} of shape {arrays[key].shape[1:]} but {env.spec.id} needs {shape}; "
                f"regenerate it with `{command} --overwrite`."
            )
    rng = np.random.default_rng(seed)
    episodes = np.split(np.arange(length), starts[1:])[:num_trajectories]
    index = np.concatenate(
        [episode[rng.integers(min(subsample_frequency, len(episode))) :: subsample_frequency] for episode in episodes]
    )
    demos = {key: value[index] for key, value in arrays.items()}
    return {key: value.astype(np.float32) if value.dtype == np.float16 else value for key, value in demos.items()}


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
    for name in (
        "eval_frequency",
        "eval_episodes",
        "rounds",
        "steps_per_round",
        "epochs_per_round",
        "batch_size",
        "beta_rampdown_rounds",
        "hidden_size",
    ):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if not 0 <= args.beta_decay <= 1:
        sys.exit(f"error: --beta-decay must lie in [0, 1], not {args.beta_decay}.")
    if args.total_timesteps is not None:
        if args.total_timesteps < 1 or args.total_timesteps % args.steps_per_round:
            sys.exit(
                f"error: --total-timesteps {args.total_timesteps} is not a positive multiple of --steps-per-round "
                f"{args.steps_per_round}; pass a multiple, or --rounds instead."
            )
        args.rounds = args.total_timesteps // args.steps_per_round
    args.total_timesteps = args.rounds * args.steps_per_round
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / run_name

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    env = make_env(args.env_id, args.seed)
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if not discrete and not isinstance(env.action_space, gym.spaces.Box):
        sys.exit(f"error: dagger.py supports Discrete and Box actions, but {args.env_id} has {env.action_space}.")
    expert_info = load_expert_info(expert_dir, env, required=True)
    expert = load_expert_policy(expert_dir, expert_info, device)
    demos = load_demos(
        expert_dir, env, args.num_expert_trajectories, args.subsample_frequency, args.seed, ("observations", "actions")
    )
    obs_dim = int(np.prod(env.observation_space.shape))

    run_dir.mkdir(parents=True, exist_ok=True)
    exit_on_stop_signals(run_dir)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    # the learner sees observations standardized with the demo statistics; constant features are left unscaled
    demo_obs = demos["observations"].reshape(len(demos["observations"]), obs_dim).astype(np.float32)
    obs_mean, obs_std = demo_obs.mean(0), demo_obs.std(0)
    obs_std = np.where(obs_std > 1e-6, obs_std, 1.0)
    if discrete:
        policy = CategoricalPolicy(obs_dim, env.action_space.n, args.hidden_size, obs_mean, obs_std).to(device)
        tolerance = None
    else:
        low, high = env.action_space.low, env.action_space.high
        policy = GaussianPolicy(
            obs_dim, int(np.prod(env.action_space.shape)), args.hidden_size, obs_mean, obs_std, low, high
        ).to(device)
        tolerance = torch.as_tensor(args.agreement_tolerance * (high - low) / 2, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)

    # D, preallocated for the demos plus every rollout step: row k of the two tensors is the pair (s_k, pi*(s_k))
    dataset_size = len(demo_obs)
    dataset_obs = torch.zeros(dataset_size + args.total_timesteps, obs_dim, device=device)
    dataset_actions = torch.zeros(
        (dataset_size + args.total_timesteps, *env.action_space.shape),
        dtype=torch.long if discrete else torch.float32,
        device=device,
    )
    dataset_obs[:dataset_size] = torch.as_tensor(demo_obs, device=device)
    dataset_actions[:dataset_size] = torch.as_tensor(demos["actions"], dtype=dataset_actions.dtype, device=device)
    learner_actions = torch.zeros_like(dataset_actions[: args.steps_per_round])

    @torch.no_grad()
    def act_deterministic(obs):
        return policy.deterministic_action(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    def run_evaluation(global_step):
        returns = evaluate(act_deterministic, eval_env, args.eval_episodes, args.seed + 10_000)
        row = {
            "global_step": global_step,
            "eval_return_mean": float(returns.mean()),
            "eval_return_std": float(returns.std()),
            "normalized_score": normalized_score(float(returns.mean()), expert_info),
            "wall_time": time.time() - start_time,
            "sps": global_step / max(time.time() - start_time, 1e-9),
        }
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        log_metrics(
            args.track, {"eval/return": row["eval_return_mean"], "eval/normalized_score": row["normalized_score"]}, global_step
        )
        progress.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    def log_round(round_index, global_step, beta, loss, metrics):
        exit_if_non_finite([loss], f"error: non-finite BC loss in round {round_index}; lower --learning-rate.")
        metrics = {
            "charts/beta": beta,
            "charts/dataset_size": dataset_size,
            "losses/bc_loss": float(loss),
            **{key: float(value) for key, value in metrics.items()},
        }
        log_metrics(args.track, {**metrics, "charts/SPS": global_step / max(time.time() - start_time, 1e-9)}, global_step)
        tqdm.write(
            f"round {round_index}/{args.rounds}: "
            + ", ".join(
                f"{key.split('/')[1]} {value if isinstance(value, int) else f'{value:.4f}'}" for key, value in metrics.items()
            )
        )

    # Alg. 3.1 initialisation: D = the expert demos (beta_1 = 1), pi_hat_1 trained on them
    start_time, eval_rows = time.time(), []
    loss = train_policy(
        policy,
        optimizer,
        dataset_obs[:dataset_size],
        dataset_actions[:dataset_size],
        args.epochs_per_round,
        args.batch_size,
        args.min_updates_per_round,
    )
    log_round(0, 0, 1.0, loss, {})
    hardware = hardware_info(device)
    print(
        f"{run_name}: {hardware['device']} ({hardware['device_name']}), {hardware['threads']} thread(s), "
        f"{hardware['precision']}",
        file=sys.stderr,
    )
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    for global_step in range(1, args.total_timesteps + 1):
        round_index, step_in_round = (global_step - 1) // args.steps_per_round + 1, (global_step - 1) % args.steps_per_round
        if step_in_round == 0:
            # Alg. 3.1: pi_i = beta_i pi* + (1 - beta_i) pi_hat_i, rolled out as fresh trajectories each round
            beta = beta_schedule(round_index, args.beta_schedule, args.beta_rampdown_rounds, args.beta_decay)
            obs, _ = env.reset(seed=args.seed if round_index == 1 else None)
            expert_steps = 0
        with torch.no_grad():
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(1, obs_dim)
            expert_action, learner_action = expert(obs_tensor)[0], policy.deterministic_action(obs_tensor)[0]
        # Alg. 3.1: D_i = {(s, pi*(s))} for every state pi_i visits, whichever policy acts there
        dataset_obs[dataset_size + step_in_round] = obs_tensor[0]
        dataset_actions[dataset_size + step_in_round] = expert_action
        learner_actions[step_in_round] = learner_action
        # the mixture draws its policy per step, so a round's states interpolate between pi*'s and pi_hat_i's
        expert_acts = random.random() < beta
        expert_steps += expert_acts
        action = (expert_action if expert_acts else learner_action).cpu().numpy()
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            log_metrics(
                args.track,
                {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]},
                global_step,
            )
            obs, _ = env.reset()

        if step_in_round == args.steps_per_round - 1:
            # pi_hat_i's agreement with pi* on the states of its own round, measured before training on them
            round_expert_actions = dataset_actions[dataset_size : dataset_size + args.steps_per_round]
            metrics = {"charts/expert_agreement": expert_agreement(learner_actions, round_expert_actions, tolerance)}
            if not discrete:
                metrics["charts/expert_action_mse"] = (learner_actions - round_expert_actions).pow(2).sum(-1).mean()
            metrics["charts/expert_share"] = expert_steps / args.steps_per_round  # of executed actions: ~beta_i
            # Alg. 3.1: D <- D u D_i, then train pi_hat_{i+1} on all of D
            dataset_size += args.steps_per_round
            loss = train_policy(
                policy,
                optimizer,
                dataset_obs[:dataset_size],
                dataset_actions[:dataset_size],
                args.epochs_per_round,
                args.batch_size,
                args.min_updates_per_round,
            )
            log_round(round_index, global_step, beta, loss, metrics)
        progress.update(1)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            run_evaluation(global_step)
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = args.total_timesteps / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, hardware)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
