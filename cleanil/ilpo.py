"""ILPO: Imitating Latent Policies from Observation, a policy over latent actions learned offline, remapped online.

ILPO (Edwards, Sahni, Schroecker, Isbell 2019, arXiv 1805.07914) imitates from state-only demonstrations in two
steps. Step 1, offline on the demos (Sec. 4.1): an encoder E(s) and a generator G(E(s), z) predict the state change
Delta = s' - s for each of K discrete latent actions z; G is trained on the best of its K guesses,
L_min = E[min_z ||Delta - G(E(s), z)||^2] (`min_loss`), so each latent comes to stand for one kind of transition, and
a latent policy pi_omega(z|s) on E(s) is trained so that its expected prediction matches the expert's transition,
L_exp = E[||Delta - sum_z pi_omega(z|s) G(E(s), z)||^2] (`expected_loss`), with G held fixed there (the gradient
reaches pi_omega and E only, as in the authors' code); the two losses are minimised together. Step 2, online
(Sec. 4.2): the agent acts greedily in latent space, z* = argmax_z pi_omega(z|s), and an action remapping network
pi_xi(a | s, z) turns z* into a real action, epsilon-greedily (`--exploration-epsilon` random actions). From each
transition it observes it infers the latent that best explains it, z_t = argmin_z ||Delta_t - G(E(s_t), z)||
(`infer_latent`), and trains pi_xi by cross-entropy to predict the action it took from (s_t, z_t) (`remap_loss`);
E, G and pi_omega stay fixed, as in the authors' code. Expert actions are never read (`DEMO_KEYS`).
Discrete actions only, as in the paper; K defaults to the number of real actions. Observations are standardised
with the demos' mean and std, and Delta is measured per dimension in units of its standard deviation over the demos,
so that no state dimension dominates the distances (the authors' code uses raw states). eval.csv's global_step counts
environment steps of step 2; step 1 runs before step 0 (`--latent-gradient-steps`), and wall_time includes it.
Evaluation is greedy: a = argmax_a pi_xi(a | s, argmax_z pi_omega(z|s)).
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

# the only expert arrays this script reads: never actions, which state-only imitation does not have
DEMO_KEYS = ("observations", "next_observations")


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
    """whether to capture videos of the agent performances (check out `videos` folder)"""
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 5_000
    """environment steps of step 2, the online action remapping (step 1 never steps the env)"""
    eval_frequency: int = 500
    """evaluate the greedy policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_frequency: int = 100
    """the training statistics (losses, SPS) go to the log every this many steps"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 10
    """number of expert demo episodes to imitate (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory"""

    # step 1: latent policy and latent forward model, offline on the demos
    num_latent_actions: Optional[int] = None
    """K, the number of latent actions z (default: the number of real actions)"""
    latent_gradient_steps: int = 5_000
    """gradient steps of step 1 on L_min + L_exp"""
    latent_batch_size: int = 256
    """expert transitions per step-1 gradient step"""
    latent_learning_rate: float = 1e-3
    """the learning rate of step 1's Adam optimizer (encoder, generator and latent policy)"""
    hidden_size: int = 128
    """width of the hidden layers (the encoding E(s), the latent embedding and the generator's first layer are twice as
    wide, as in the authors' vector model; the remapping network is this wide throughout)"""

    # step 2: action remapping by interaction
    exploration_epsilon: float = 0.2
    """probability of a uniformly random action instead of the remapped greedy latent action (the authors' code: 0.2)"""
    remap_learning_rate: float = 2e-3
    """the learning rate of the remapping network's Adam optimizer (the authors' code: 2e-3)"""
    remap_batch_size: int = 32
    """transitions per remapping gradient step, drawn from all the agent's transitions so far"""
    remap_updates_per_step: int = 1
    """remapping gradient steps after each environment step"""
    normalize_observations: bool = True
    """standardise observations with the expert demos' mean and std, and Delta with the std of the demos' s' - s"""


# ----------------------------------------------------------------------------------------------------------- ILPO
class LatentModel(nn.Module):
    """Step 1's networks on standardised observations: the encoder E(s), the latent policy pi_omega(z|s) on E(s), and
    the generator G(E(s), z) of Delta for every z at once; leaky ReLUs (slope 0.2) and a learned embedding of z
    concatenated to E(s), as in the authors' vector model."""

    def __init__(self, obs_dim, num_latent_actions, hidden_size):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(obs_dim, hidden_size), nn.LeakyReLU(0.2), nn.Linear(hidden_size, 2 * hidden_size), nn.LeakyReLU(0.2)
        )
        self.latent_policy = nn.Linear(2 * hidden_size, num_latent_actions)
        self.latent_embedding = nn.Sequential(nn.Embedding(num_latent_actions, 2 * hidden_size), nn.LeakyReLU(0.2))
        self.generator = nn.Sequential(
            nn.Linear(4 * hidden_size, 2 * hidden_size),
            nn.LeakyReLU(0.2),
            nn.Linear(2 * hidden_size, hidden_size),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_size, obs_dim),
        )
        self.register_buffer("latents", torch.arange(num_latent_actions))

    def forward(self, obs):
        """Latent policy logits [B, K] and predictions G(E(s), z) of Delta for every latent z [B, K, obs_dim]."""
        encoding = self.encoder(obs)
        z = self.latent_embedding(self.latents)
        pairs = torch.cat([encoding[:, None].expand(-1, len(z), -1), z[None].expand(len(obs), -1, -1)], -1)
        return self.latent_policy(encoding), self.generator(pairs)

    def latent_logits(self, obs):
        return self.latent_policy(self.encoder(obs))


class RemapNetwork(nn.Module):
    """pi_xi(a | s, z): logits over real actions from a standardised observation and a latent action, with its own
    encoder of s (the authors' code does not reuse E) and an embedding of z."""

    def __init__(self, obs_dim, num_latent_actions, num_actions, hidden_size):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(obs_dim, hidden_size), nn.LeakyReLU(0.2), nn.Linear(hidden_size, hidden_size), nn.LeakyReLU(0.2)
        )
        self.latent_embedding = nn.Sequential(nn.Embedding(num_latent_actions, hidden_size), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(
            nn.Linear(2 * hidden_size, hidden_size), nn.LeakyReLU(0.2), nn.Linear(hidden_size, num_actions)
        )

    def forward(self, obs, z):
        return self.head(torch.cat([self.encoder(obs), self.latent_embedding(z)], -1))


def prediction_errors(predictions, delta):
    """||Delta - G(E(s), z)||^2 for every latent z: [B, K]."""
    return ((predictions - delta[:, None]) ** 2).sum(-1)


def min_loss(predictions, delta):
    """Sec. 4.1, L_min = E[min_z ||Delta - G(E(s), z)||^2]: only the best latent's prediction is pulled towards the
    transition, so the K latents split the demonstrated transitions among themselves."""
    return prediction_errors(predictions, delta).min(-1).values.mean()


def expected_loss(latent_logits, predictions, delta):
    """Sec. 4.1, L_exp = E[||Delta - sum_z pi_omega(z|s) G(E(s), z)||^2] with G held fixed (detached): it trains the
    latent policy (and E) to weight the latent whose outcome the expert produced, not G to fit the mixture."""
    expected = (F.softmax(latent_logits, -1)[..., None] * predictions.detach()).sum(1)
    return ((expected - delta) ** 2).sum(-1).mean()


def infer_latent(predictions, delta):
    """Sec. 4.2, z_t = argmin_z ||Delta_t - G(E(s_t), z)||: the latent action that best explains an observed transition."""
    return prediction_errors(predictions, delta).argmin(-1)


def remap_loss(remap_logits, actions):
    """Sec. 4.2: cross-entropy -log pi_xi(a_t | s_t, z_t) of the real action taken, given the inferred latent."""
    return F.cross_entropy(remap_logits, actions)


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
        "latent_batch_size",
        "remap_batch_size",
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

    env = make_env(args.env_id, args.seed)
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        sys.exit(
            f"error: ilpo.py needs discrete actions (its latent actions are remapped to a finite set of real ones, as in "
            f"the paper), but {args.env_id} has {env.action_space}; for continuous control use bco.py or gaifo.py."
        )
    num_actions = int(env.action_space.n)
    num_latent_actions = num_actions if args.num_latent_actions is None else args.num_latent_actions
    if num_latent_actions < 1:
        sys.exit(f"error: --num-latent-actions must be positive, got {num_latent_actions}.")
    if not 0 <= args.exploration_epsilon <= 1 or args.latent_gradient_steps < 0 or args.remap_updates_per_step < 0:
        sys.exit(
            f"error: ILPO needs 0 <= --exploration-epsilon <= 1, --latent-gradient-steps >= 0 and --remap-updates-per-step "
            f">= 0, "
            f"got {args.exploration_epsilon}, {args.latent_gradient_steps} and {args.remap_updates_per_step}."
        )
    expert_info = load_expert_info(expert_dir, env, required=True)
    demos = load_demos(expert_dir, env, args.num_expert_trajectories, args.subsample_frequency, args.seed, DEMO_KEYS)
    for key, value in demos.items():
        if not np.isfinite(value).all():
            sys.exit(
                f"error: {expert_dir / 'demos.npz'} holds non-finite {key}; regenerate it with "
                f"`{expert_command(args.env_id, expert_dir)} --overwrite`."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    exit_on_stop_signals(run_dir)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    obs_demo = torch.as_tensor(
        demos["observations"].reshape(len(demos["observations"]), -1), dtype=torch.float32, device=device
    )
    next_obs_demo = torch.as_tensor(demos["next_observations"].reshape(len(obs_demo), -1), dtype=torch.float32, device=device)
    obs_dim = obs_demo.shape[1]
    if args.normalize_observations:
        # +1e-3 keeps constant dims (e.g. a pinned joint, or one the actions never change) from blowing up, as TD3+BC does
        obs_mean, obs_std = obs_demo.mean(0), obs_demo.std(0) + 1e-3
        delta_std = (next_obs_demo - obs_demo).std(0) + 1e-3
    else:
        obs_mean, obs_std, delta_std = (
            torch.zeros(obs_dim, device=device),
            torch.ones(obs_dim, device=device),
            torch.ones(obs_dim, device=device),
        )

    def normalize(obs):
        return (torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1) - obs_mean) / obs_std

    def state_change(obs, next_obs):
        """Delta = s' - s, per dimension in units of its std over the demos, from raw observations."""
        return (
            torch.as_tensor(next_obs, dtype=torch.float32, device=device).flatten(1)
            - torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1)
        ) / delta_std

    latent_model = LatentModel(obs_dim, num_latent_actions, args.hidden_size).to(device)
    latent_optimizer = torch.optim.Adam(latent_model.parameters(), lr=args.latent_learning_rate)
    remap = RemapNetwork(obs_dim, num_latent_actions, num_actions, args.hidden_size).to(device)
    remap_optimizer = torch.optim.Adam(remap.parameters(), lr=args.remap_learning_rate)
    s_demo, delta_demo = normalize(obs_demo), state_change(obs_demo, next_obs_demo)
    eval_rows = []

    # the agent's transitions as step 2 trains on them: standardised s, the action taken, the latent inferred
    b_obs = torch.zeros(args.total_timesteps, obs_dim, device=device)
    b_actions = torch.zeros(args.total_timesteps, dtype=torch.long, device=device)
    b_latents = torch.zeros(args.total_timesteps, dtype=torch.long, device=device)

    @torch.no_grad()
    def act_greedy(obs):
        """a = argmax_a pi_xi(a | s, z*), z* = argmax_z pi_omega(z|s)."""
        s = normalize(obs)
        return remap(s, latent_model.latent_logits(s).argmax(-1)).argmax(-1).cpu().numpy()

    def run_evaluation(global_step):
        returns = evaluate(act_greedy, eval_env, args.eval_episodes, args.seed + 10_000)
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
    # step 1 (Sec. 4.1): latent forward model and latent policy, offline on the demonstrated transitions
    for latent_step in range(1, args.latent_gradient_steps + 1):
        index = torch.randint(0, len(s_demo), (args.latent_batch_size,), device=device)
        latent_logits, predictions = latent_model(s_demo[index])
        generator_loss = min_loss(predictions, delta_demo[index])
        policy_loss = expected_loss(latent_logits, predictions, delta_demo[index])
        latent_optimizer.zero_grad(set_to_none=True)
        (generator_loss + policy_loss).backward()
        latent_optimizer.step()
    with torch.no_grad():
        latent_logits, predictions = latent_model(s_demo)
        generator_loss, policy_loss = min_loss(predictions, delta_demo), expected_loss(latent_logits, predictions, delta_demo)
        # how the demonstrated transitions split among the latents, and how often the latent policy picks the latent
        # that explains the expert's transition (an imitation accuracy in latent space)
        demo_latents = infer_latent(predictions, delta_demo)
        latent_usage = torch.bincount(demo_latents, minlength=num_latent_actions).float() / len(demo_latents)
        latent_policy_accuracy = (latent_logits.argmax(-1) == demo_latents).float().mean()
    exit_if_non_finite(
        [generator_loss, policy_loss],
        f"error: non-finite step-1 loss (L_min {float(generator_loss)}, L_exp {float(policy_loss)}); lower "
        f"--latent-learning-rate.",
    )
    tqdm.write(
        f"step 1: {args.latent_gradient_steps} gradient steps, L_min {float(generator_loss):.4f}, L_exp "
        f"{float(policy_loss):.4f}, "
        f"demo transitions per latent {[round(float(u), 3) for u in latent_usage]}, latent policy accuracy "
        f"{float(latent_policy_accuracy):.3f}"
    )
    log_metrics(
        args.track,
        {
            "losses/min_loss": generator_loss,
            "losses/expected_loss": policy_loss,
            "charts/latent_policy_accuracy": latent_policy_accuracy,
        },
        0,
    )

    hardware = hardware_info(device)
    print(
        f"{run_name}: {hardware['device']} ({hardware['device_name']}), {hardware['threads']} thread(s), "
        f"{hardware['precision']}",
        file=sys.stderr,
    )
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    # step 2 (Sec. 4.2): remap latent actions to real ones by interaction
    obs, _ = env.reset(seed=args.seed)
    remap_loss_value, agreement = torch.zeros((), device=device), torch.zeros((), device=device)
    for global_step in range(1, args.total_timesteps + 1):
        if random.random() < args.exploration_epsilon:
            action = env.action_space.sample()
        else:
            action = act_greedy(obs[None])[0]
        next_obs, _, terminated, truncated, info = env.step(action)
        with torch.no_grad():
            s = normalize(obs[None])
            latent = infer_latent(latent_model(s)[1], state_change(obs[None], next_obs[None]))
        b_obs[global_step - 1], b_actions[global_step - 1], b_latents[global_step - 1] = s[0], int(action), latent[0]
        obs = next_obs
        if terminated or truncated:
            log_metrics(
                args.track,
                {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]},
                global_step,
            )
            obs, _ = env.reset()

        if global_step >= args.remap_batch_size:
            for _ in range(args.remap_updates_per_step):
                index = torch.randint(0, global_step, (args.remap_batch_size,), device=device)
                logits = remap(b_obs[index], b_latents[index])
                loss = remap_loss(logits, b_actions[index])
                remap_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                remap_optimizer.step()
                remap_loss_value = loss.detach()
                agreement = (logits.argmax(-1) == b_actions[index]).float().mean()
        progress.update(1)
        if global_step % args.log_frequency == 0:
            log_metrics(
                args.track,
                {
                    "losses/remap_loss": remap_loss_value,
                    "charts/remap_accuracy": agreement,
                    "charts/SPS": global_step / (time.time() - start_time),
                },
                global_step,
            )
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            exit_if_non_finite(
                [remap_loss_value], f"error: non-finite remapping loss at step {global_step}; lower --remap-learning-rate."
            )
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
