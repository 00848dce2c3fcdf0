"""Behavioral cloning: supervised maximum likelihood on expert (state, action) pairs.

BC (Pomerleau 1989, ALVINN; the analysis of Ross & Bagnell 2010, AISTATS) fits a policy pi_theta to the expert's
demonstrations by maximum likelihood, theta* = argmax_theta sum_i log pi_theta(a_i | s_i) (`bc_loss`), with no
environment interaction during training. Heads: a categorical over discrete actions; for continuous actions a
diagonal Gaussian (`--policy gaussian`, MLE = least squares with a learned variance, by default its beta-NLL
variant `--nll-beta 0.5` that keeps the mean fitted where the variance is large) or a mixture of K diagonal
Gaussians (`--policy mixture`, `mixture_log_prob`: log sum_k w_k N(a; mu_k, sigma_k), the mixture density network
of Bishop 1994, as used by robomimic, Mandlekar et al. 2021, arXiv 2108.03298), which can put its mass on several
modes of a multimodal expert instead of averaging them. Observations are standardised with the demos' mean and std,
continuous actions are fitted in the action space rescaled to [-1, 1].

`--total-timesteps` counts gradient steps (minibatches of `--batch-size`), not epochs: BC never steps the env while
training, so the x-axis of eval.csv (global_step) and its `sps` column are gradient steps. Evaluation is
deterministic: argmax, the Gaussian mean, or the mean of the mixture's most probable component.
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
    total_timesteps: int = 10_000
    """gradient steps of behavioral cloning (BC never steps the env while training; this is eval.csv's global_step)"""
    eval_frequency: int = 1_000
    """evaluate the deterministic policy every this many gradient steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_frequency: int = 100
    """the training statistics (losses, SPS) go to the log every this many steps"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 10
    """number of expert demo episodes to clone (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory"""

    # BC
    policy: Literal["gaussian", "mixture"] = "gaussian"
    """continuous actions only: a diagonal Gaussian, or a mixture of `num_components` diagonal Gaussians"""
    num_components: int = 5
    """number of mixture components K of `--policy mixture`"""
    batch_size: int = 256
    """expert transitions per gradient step"""
    learning_rate: float = 1e-3
    """the learning rate of the Adam optimizer"""
    hidden_size: int = 256
    """width of the two hidden layers of the policy"""
    log_std_min: float = -5.0
    """lower bound of the log standard deviation of the Gaussian (components), in the [-1, 1]-rescaled action space"""
    log_std_max: float = 2.0
    """upper bound of the log standard deviation of the Gaussian (components)"""
    normalize_observations: bool = True
    """standardise observations with the expert demos' mean and std"""
    nll_beta: float = 0.5
    """`--policy gaussian`: beta of the beta-NLL (Seitzer et al. 2022), each dim's NLL weighted by sigma^(2 beta) held
    fixed; 0 is plain maximum likelihood, whose learned sigma starves the mean of gradient (see `bc_loss`)"""


# -------------------------------------------------------------------------------------------- behavioural cloning
class Policy(nn.Module):
    """MLP on standardised observations with a categorical, Gaussian or Gaussian-mixture head.

    Continuous actions are modelled in the rescaled space (a - action_bias) / action_scale, which is [-1, 1] on the
    env's bounds; their log-likelihoods differ from the raw-action ones by the constant sum(log action_scale)."""

    def __init__(
        self,
        head,
        obs_mean,
        obs_std,
        action_dim,
        hidden_size,
        num_components=1,
        action_scale=None,
        action_bias=None,
        log_std_min=-5.0,
        log_std_max=2.0,
    ):
        super().__init__()
        self.head, self.action_dim, self.num_components = head, action_dim, num_components
        out_dim = {"categorical": action_dim, "gaussian": 2 * action_dim, "mixture": num_components * (1 + 2 * action_dim)}[
            head
        ]
        self.network = nn.Sequential(
            nn.Linear(len(obs_mean), hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, out_dim),
        )
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))
        ones = torch.ones(action_dim if head != "categorical" else 0)
        self.register_buffer(
            "action_scale", ones if action_scale is None else torch.as_tensor(action_scale, dtype=torch.float32)
        )
        self.register_buffer(
            "action_bias", 0 * ones if action_bias is None else torch.as_tensor(action_bias, dtype=torch.float32)
        )

    def forward(self, obs):
        """Categorical: logits [B, A]. Gaussian: mean, log_std [B, D]. Mixture: logits [B, K], means, log_stds [B, K, D]."""
        out = self.network((obs - self.obs_mean) / self.obs_std)
        if self.head == "categorical":
            return (out,)
        if self.head == "mixture":
            logits, out = (
                out[:, : self.num_components],
                out[:, self.num_components :].view(-1, self.num_components, 2 * self.action_dim),
            )
        mean, log_std = out.chunk(2, -1)
        # squash log_std into [min, max] smoothly instead of clipping (keeps its gradient alive), as in sac.py
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        return (mean, log_std) if self.head == "gaussian" else (logits, mean, log_std)

    def log_prob(self, obs, actions, nll_beta=0.0):
        """log pi(a|s) of expert actions (class indices, or raw continuous actions); for the Gaussian head with
        nll_beta > 0, each dim weighted by stopgrad(sigma_d^(2 beta)), the beta-NLL's weights (see `bc_loss`)."""
        params = self(obs)
        if self.head == "categorical":
            return categorical_log_prob(*params, actions)
        actions = (actions - self.action_bias) / self.action_scale
        if self.head == "mixture":
            return mixture_log_prob(*params, actions)
        mean, log_std = params
        return gaussian_log_prob(mean, log_std, actions, (2 * nll_beta * log_std).detach().exp())

    def deterministic_action(self, obs):
        """argmax; the Gaussian mean; the mean of the most probable mixture component (not the mixture mean, which
        would average the expert's modes, the very failure the mixture is there to avoid); clipped to the bounds."""
        params = self(obs)
        if self.head == "categorical":
            return params[0].argmax(-1)
        if self.head == "gaussian":
            mean = params[0]
        else:
            logits, means, _ = params
            mean = means[torch.arange(len(means), device=means.device), logits.argmax(-1)]
        return mean.clamp(-1, 1) * self.action_scale + self.action_bias


def categorical_log_prob(logits, actions):
    """log softmax(logits)[a]."""
    return F.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)


def gaussian_log_prob(mean, log_std, actions, dim_weights=1.0):
    """sum_d w_d log N(a_d; mu_d, sigma_d), a diagonal Gaussian's log density for w = 1."""
    return (dim_weights * (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi))).sum(-1)


def mixture_log_prob(logits, means, log_stds, actions):
    """log sum_k w_k N(a; mu_k, diag sigma_k^2), w = softmax(logits): the mixture density network likelihood (Bishop
    1994), a logsumexp over components so that no component's tiny density underflows to log 0."""
    component_log_prob = gaussian_log_prob(means, log_stds, actions.unsqueeze(-2))  # [B, K]
    return torch.logsumexp(F.log_softmax(logits, -1) + component_log_prob, -1)


def bc_loss(policy, obs, actions, nll_beta=0.0):
    """Maximum likelihood: -1/N sum_i log pi_theta(a_i | s_i) over the expert minibatch.

    For the Gaussian head with nll_beta > 0 it is the beta-NLL of Seitzer et al. 2022 (ICLR, arXiv 2203.09168),
    -1/N sum_i sum_d stopgrad(sigma_id^(2 beta)) log N(a_id; mu_id, sigma_id): under plain maximum likelihood the mean's
    gradient (mu - a) / sigma^2 is largest where sigma is already small, so the fit settles on the easy states and
    leaves the mean wrong elsewhere (HalfCheetah-v4, 10 trajectories: train MSE of the mean 0.011 vs 0.0012 at beta
    0.5). beta = 1 gives the mean exactly the squared error's gradient."""
    return -policy.log_prob(obs, actions, nll_beta).mean()


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
        "total_timesteps",
        "eval_frequency",
        "eval_episodes",
        "log_frequency",
        "batch_size",
        "num_components",
        "hidden_size",
    ):
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
    discrete = isinstance(eval_env.action_space, gym.spaces.Discrete)
    if not discrete and not isinstance(eval_env.action_space, gym.spaces.Box):
        sys.exit(
            f"error: bc.py supports Discrete and Box actions, but {args.env_id} has {eval_env.action_space}; pick another env."
        )
    expert_info = load_expert_info(expert_dir, eval_env, required=True)
    demos = load_demos(
        expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, ("observations", "actions")
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    exit_on_stop_signals(run_dir)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    obs_demo = torch.as_tensor(
        demos["observations"].reshape(len(demos["observations"]), -1), dtype=torch.float32, device=device
    )
    act_demo = torch.as_tensor(demos["actions"], dtype=torch.long if discrete else torch.float32, device=device)
    if args.normalize_observations:
        # +1e-3 keeps constant observation dims (e.g. a pinned joint) from blowing up, as TD3+BC does
        obs_mean, obs_std = obs_demo.mean(0), obs_demo.std(0) + 1e-3
    else:
        obs_mean, obs_std = torch.zeros(obs_demo.shape[1]), torch.ones(obs_demo.shape[1])
    if discrete:
        policy = Policy("categorical", obs_mean, obs_std, int(eval_env.action_space.n), args.hidden_size)
    else:
        high, low = eval_env.action_space.high, eval_env.action_space.low
        if not (np.isfinite(high).all() and np.isfinite(low).all()):
            sys.exit(
                f"error: bc.py rescales actions to [-1, 1] and needs finite action bounds, but {args.env_id} has "
                f"{eval_env.action_space}."
            )
        policy = Policy(
            args.policy,
            obs_mean,
            obs_std,
            int(np.prod(eval_env.action_space.shape)),
            args.hidden_size,
            args.num_components if args.policy == "mixture" else 1,
            (high - low) / 2,
            (high + low) / 2,
            args.log_std_min,
            args.log_std_max,
        )
    policy = policy.to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    eval_rows = []

    @torch.no_grad()
    def act_deterministic(obs):
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1)
        return policy.deterministic_action(obs).cpu().numpy().reshape((len(obs), *eval_env.action_space.shape))

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
    for global_step in range(1, args.total_timesteps + 1):
        index = torch.randint(0, len(obs_demo), (args.batch_size,), device=device)
        loss = bc_loss(policy, obs_demo[index], act_demo[index], args.nll_beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(1)
        if global_step % args.log_frequency == 0:
            log_metrics(
                args.track, {"losses/bc_loss": loss, "charts/SPS": global_step / (time.time() - start_time)}, global_step
            )
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            exit_if_non_finite([loss], f"error: non-finite BC loss at step {global_step}; lower --learning-rate.")
            run_evaluation(global_step)
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = args.total_timesteps / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, hardware)
    print(
        f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} gradient steps/s, outputs in "
        f"{run_dir}"
    )
    eval_env.close()
    if args.track:
        wandb.finish()
