"""BCO: Behavioral Cloning from Observation, BC on expert actions inferred by a learned inverse dynamics model.

BCO (Torabi, Warnell, Stone 2018, arXiv 1805.01954) imitates from state-only demonstrations. The agent first
interacts with its environment under a random policy (the pre-demonstration phase, `--pre-demo-steps`), and learns
from its own (s, a, s') an agent-specific inverse dynamics model M_theta(a | s, s') by maximum likelihood
(theta* = argmax prod_i M_theta(a_i | s_i, s'_i), `inverse_model_loss`). It then labels each demonstrated transition
(s, s') with the most likely action a~ = argmax_a M_theta(a | s, s') (`infer_actions`) and clones the expert by BC
on the inferred pairs (phi* = argmax prod_i pi_phi(a~_i | s_i), `bc_loss`). Expert actions are never read
(`DEMO_KEYS`). Map from Alg. 1, BCO(alpha) (paraphrased), to this file:
  pi_phi: a random policy; I = |I_pre|          the first iteration acts uniformly at random for --pre-demo-steps
  while policy improvement:                     iterations until --total-timesteps environment steps are spent
    run pi_phi for I steps, append (s, s', a)   `sample_action` (a ~ pi_phi, not its mode: M_theta needs varied a)
    improve M_theta on all (s, s', a) so far    --inverse-gradient-steps of `inverse_model_loss`, continuing from the
                                                previous M_theta; `inverse_model_score` on held-out transitions
    infer A~_demo with M_theta from (s, s')     `infer_actions` over every demonstrated transition
    improve pi_phi by BC on (S_demo, A~_demo)   --policy-gradient-steps of `bc_loss`, continuing from the previous pi_phi
    I = alpha |I_pre|                           --alpha 0 is BCO(0): one iteration, no post-demonstration interaction
M_theta and pi_phi are bc.py's networks (copied): a categorical over discrete actions, a Gaussian (or `--policy
mixture` for pi_phi) over continuous actions in the [-1, 1]-rescaled action space, where the mode of M_theta is its
mean. M_theta reads (s, s' - s), the same information as (s, s') but with the action's effect not buried in the
difference of two large inputs, standardised with the pre-demonstration data's statistics; pi_phi reads s
standardised with the demos' statistics. The paper's "agent-specific" state features are the full observation here.
eval.csv's global_step counts environment steps (the pre-demonstration ones included), so BCO(0)'s only points are
step 0 (the untrained policy) and step --pre-demo-steps.
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
    total_timesteps: int = 10_000
    """environment steps in all: --pre-demo-steps, then BCO(alpha) iterations of alpha * pre_demo_steps steps each
    until this budget is spent (with --alpha 0 the run ends after the pre-demonstration phase)"""
    eval_frequency: int = 2_000
    """evaluate the deterministic policy after the first iteration that crosses each multiple of this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 10
    """number of expert demo episodes to imitate (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory"""

    # BCO
    pre_demo_steps: int = 5_000
    """|I_pre|: environment steps of the random policy before the demonstration, which the inverse model learns from"""
    alpha: float = 0.1
    """BCO(alpha): each post-demonstration iteration runs the current policy for alpha * pre_demo_steps steps (0: BCO(0))"""
    holdout_fraction: float = 0.1
    """fraction of each iteration's interaction kept out of the inverse model's training to measure its accuracy or error"""
    inverse_gradient_steps: int = 2_000
    """gradient steps on the inverse model per iteration (continuing from the previous iteration's model)"""
    policy_gradient_steps: int = 2_000
    """gradient steps of behavioral cloning per iteration (continuing from the previous iteration's policy)"""
    policy: Literal["gaussian", "mixture"] = "gaussian"
    """continuous actions only: the policy is a diagonal Gaussian, or a mixture of `num_components` diagonal Gaussians
    (the inverse model is always a Gaussian, whose mean is its most likely action)"""
    num_components: int = 5
    """number of mixture components K of `--policy mixture`"""
    batch_size: int = 256
    """transitions per gradient step, of the inverse model and of the policy"""
    learning_rate: float = 1e-3
    """the learning rate of the Adam optimizers of the inverse model and of the policy"""
    hidden_size: int = 256
    """width of the two hidden layers of the inverse model and of the policy"""
    log_std_min: float = -5.0
    """lower bound of the log standard deviation of the Gaussian (components), in the [-1, 1]-rescaled action space"""
    log_std_max: float = 2.0
    """upper bound of the log standard deviation of the Gaussian (components)"""
    nll_beta: float = 0.5
    """Gaussian heads: beta of the beta-NLL (Seitzer et al. 2022) of M_theta and pi_phi, each dim's NLL weighted by
    sigma^(2 beta) held fixed; 0 is plain maximum likelihood (see bc.py's `bc_loss`)"""
    normalize_observations: bool = True
    """standardise the policy's observations with the demos' statistics, the inverse model's with the pre-demonstration
    data's"""


# ------------------------------------------------------------------------------------------------------------ BCO
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


def inverse_model_inputs(obs, next_obs):
    """M_theta's input for the transition (s, s'): s and s' - s side by side (the same information as (s, s'))."""
    return torch.cat([obs, next_obs - obs], -1)


def inverse_model_loss(inverse_model, inputs, actions, nll_beta=0.0):
    """modelLearning of Alg. 1, maximum likelihood: -1/N sum_i log M_theta(a_i | s_i, s'_i) on the agent's own data
    (the Gaussian's beta-NLL for nll_beta > 0, as in `bc_loss`)."""
    return bc_loss(inverse_model, inputs, actions, nll_beta)


def infer_actions(inverse_model, inputs):
    """a~ = argmax_a M_theta(a | s, s') for each demonstrated transition: the class of highest probability, or the
    Gaussian's mean (clipped to the action bounds)."""
    return inverse_model.deterministic_action(inputs)


def inverse_model_score(inverse_model, inputs, actions):
    """Held-out quality of M_theta: the accuracy of infer_actions (discrete), or its mean absolute error in the env's
    action units (continuous)."""
    inferred = infer_actions(inverse_model, inputs)
    if inverse_model.head == "categorical":
        return (inferred == actions).float().mean()
    return (inferred - actions).abs().mean()


def sample_action(policy, obs):
    """a ~ pi_phi(.|s), what the agent executes after the demonstration: a class, or a continuous action drawn from the
    Gaussian (or from a component drawn by its weight) in the rescaled space, clipped to [-1, 1], in env units."""
    params = policy(obs)
    if policy.head == "categorical":
        return torch.distributions.Categorical(logits=params[0]).sample()
    if policy.head == "gaussian":
        mean, log_std = params
    else:
        logits, means, log_stds = params
        rows, component = (
            torch.arange(len(means), device=means.device),
            torch.distributions.Categorical(logits=logits).sample(),
        )
        mean, log_std = means[rows, component], log_stds[rows, component]
    action = mean + log_std.exp() * torch.randn_like(mean)
    return action.clamp(-1, 1) * policy.action_scale + policy.action_bias


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
        "pre_demo_steps",
        "inverse_gradient_steps",
        "policy_gradient_steps",
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

    env = make_env(args.env_id, args.seed)
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if not discrete and not isinstance(env.action_space, gym.spaces.Box):
        sys.exit(
            f"error: bco.py supports Discrete and Box actions, but {args.env_id} has {env.action_space}; pick another env."
        )
    if args.total_timesteps < args.pre_demo_steps or args.alpha < 0 or not 0 <= args.holdout_fraction < 1:
        sys.exit(
            f"error: BCO needs --total-timesteps >= --pre-demo-steps, --alpha >= 0 and 0 <= --holdout-fraction < 1, got "
            f"{args.total_timesteps}, {args.pre_demo_steps}, {args.alpha} and {args.holdout_fraction}."
        )
    expert_info = load_expert_info(expert_dir, env, required=True)
    demos = load_demos(expert_dir, env, args.num_expert_trajectories, args.subsample_frequency, args.seed, DEMO_KEYS)
    for key, value in demos.items():
        if not np.isfinite(value).all():
            sys.exit(
                f"error: {expert_dir / 'demos.npz'} holds non-finite {key}; regenerate it with "
                f"`{expert_command(args.env_id, expert_dir)} --overwrite`."
            )
    if not discrete:
        high, low = env.action_space.high, env.action_space.low
        if not (np.isfinite(high).all() and np.isfinite(low).all()):
            sys.exit(
                f"error: bco.py rescales actions to [-1, 1] and needs finite action bounds, but {args.env_id} has "
                f"{env.action_space}."
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
        # +1e-3 keeps constant observation dims (e.g. a pinned joint) from blowing up, as TD3+BC does
        obs_mean, obs_std = obs_demo.mean(0), obs_demo.std(0) + 1e-3
    else:
        obs_mean, obs_std = torch.zeros(obs_dim), torch.ones(obs_dim)
    if discrete:
        num_actions = int(env.action_space.n)
        policy = Policy("categorical", obs_mean, obs_std, num_actions, args.hidden_size)
    else:
        action_dim, scale, bias = int(np.prod(env.action_space.shape)), (high - low) / 2, (high + low) / 2
        policy = Policy(
            args.policy,
            obs_mean,
            obs_std,
            action_dim,
            args.hidden_size,
            args.num_components if args.policy == "mixture" else 1,
            scale,
            bias,
            args.log_std_min,
            args.log_std_max,
        )
    policy = policy.to(device)
    policy_optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    inverse_model, inverse_optimizer = None, None  # built once the pre-demonstration data fixes its input statistics
    demo_inputs = inverse_model_inputs(obs_demo, next_obs_demo)

    # the agent's own transitions (Alg. 1's T^a and A), on the training device, plus which ones are held out
    b_obs = torch.zeros(args.total_timesteps, obs_dim, device=device)
    b_next_obs = torch.zeros(args.total_timesteps, obs_dim, device=device)
    b_actions = torch.zeros(
        (args.total_timesteps, *env.action_space.shape), dtype=torch.long if discrete else torch.float32, device=device
    )
    b_held_out = torch.zeros(args.total_timesteps, dtype=torch.bool, device=device)
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
    obs, _ = env.reset(seed=args.seed)
    global_step, iteration, episode_returns = 0, 0, []
    post_demo_steps = max(1, round(args.alpha * args.pre_demo_steps))
    while True:
        iteration += 1
        # Alg. 1: run pi_phi (at first a uniformly random policy) for I steps, appending (s, s') and a
        iteration_start = global_step
        num_steps = args.pre_demo_steps if iteration == 1 else min(post_demo_steps, args.total_timesteps - global_step)
        for _ in range(num_steps):
            if iteration == 1:
                action = env.action_space.sample()
            else:
                with torch.no_grad():
                    action = sample_action(policy, torch.as_tensor(obs[None], dtype=torch.float32, device=device).flatten(1))
                action = action[0].cpu().numpy().reshape(env.action_space.shape)
            next_obs, _, terminated, truncated, info = env.step(action)
            b_obs[global_step] = torch.as_tensor(obs, dtype=torch.float32).flatten()
            b_next_obs[global_step] = torch.as_tensor(next_obs, dtype=torch.float32).flatten()
            b_actions[global_step] = torch.as_tensor(action)
            obs = next_obs
            global_step += 1
            progress.update(1)
            if terminated or truncated:
                episode_returns.append(float(info["episode"]["r"]))
                obs, _ = env.reset()
        # a fixed share of each iteration's steps, drawn at random, never trains the inverse model
        held_out = torch.randperm(num_steps, device=device)[: int(args.holdout_fraction * num_steps)] + iteration_start
        b_held_out[held_out] = True
        inputs = inverse_model_inputs(b_obs[:global_step], b_next_obs[:global_step])
        train_index = (~b_held_out[:global_step]).nonzero().squeeze(-1)
        held_out_index = b_held_out[:global_step].nonzero().squeeze(-1)
        if iteration == 1:
            if args.normalize_observations:
                input_mean, input_std = inputs[train_index].mean(0), inputs[train_index].std(0) + 1e-3
            else:
                input_mean, input_std = torch.zeros(2 * obs_dim), torch.ones(2 * obs_dim)
            if discrete:
                inverse_model = Policy("categorical", input_mean, input_std, num_actions, args.hidden_size)
            else:
                inverse_model = Policy(
                    "gaussian",
                    input_mean,
                    input_std,
                    action_dim,
                    args.hidden_size,
                    1,
                    scale,
                    bias,
                    args.log_std_min,
                    args.log_std_max,
                )
            inverse_model = inverse_model.to(device)
            inverse_optimizer = torch.optim.Adam(inverse_model.parameters(), lr=args.learning_rate)

        # Alg. 1: improve M_theta by model learning on all the agent's transitions so far
        for _ in range(args.inverse_gradient_steps):
            index = train_index[torch.randint(0, len(train_index), (args.batch_size,), device=device)]
            inverse_loss = inverse_model_loss(inverse_model, inputs[index], b_actions[index], args.nll_beta)
            inverse_optimizer.zero_grad(set_to_none=True)
            inverse_loss.backward()
            inverse_optimizer.step()

        # Alg. 1: infer the demonstrated transitions' actions with M_theta, then improve pi_phi by behavioral cloning
        with torch.no_grad():
            inferred_actions = infer_actions(inverse_model, demo_inputs)
        for _ in range(args.policy_gradient_steps):
            index = torch.randint(0, len(obs_demo), (args.batch_size,), device=device)
            loss = bc_loss(policy, obs_demo[index], inferred_actions[index], args.nll_beta)
            policy_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            policy_optimizer.step()

        inverse_loss, loss = inverse_loss.detach(), loss.detach()
        exit_if_non_finite(
            [inverse_loss, loss],
            f"error: non-finite loss at iteration {iteration} (inverse model {float(inverse_loss)}, BC {float(loss)}); "
            f"lower --learning-rate.",
        )
        score = torch.tensor(float("nan"))  # --holdout-fraction 0: nothing to measure on
        if len(held_out_index):
            with torch.no_grad():
                score = inverse_model_score(inverse_model, inputs[held_out_index], b_actions[held_out_index])
        score_name = "inverse_model_accuracy" if discrete else "inverse_model_mae"
        tqdm.write(
            f"iteration {iteration}, step {global_step}: held-out {score_name.replace('_', ' ')} {float(score):.4f} "
            f"({len(held_out_index)} transitions), inverse model loss {float(inverse_loss):.4f}, BC loss {float(loss):.4f}"
        )
        log = {
            f"charts/{score_name}": float(score),
            "losses/inverse_model_loss": float(inverse_loss),
            "losses/bc_loss": float(loss),
            "charts/iteration": iteration,
            "charts/SPS": global_step / (time.time() - start_time),
        }
        if episode_returns:
            log["charts/episodic_return"] = np.mean(episode_returns)
        log_metrics(args.track, log, global_step)
        episode_returns = []
        done = args.alpha == 0 or global_step >= args.total_timesteps
        if global_step // args.eval_frequency > iteration_start // args.eval_frequency or done:
            run_evaluation(global_step)
        if done:
            break
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = global_step / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, hardware)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
