"""PMI imitation from observation: reward the agent with the expert's pointwise mutual information of (s_t, s_{t+1}).

Imitation from observation: the demonstrations hold the expert's states only (`DEMO_KEYS`; the `actions` array of
demos.npz is never read). A two-tower critic f(s, s') = exp(score(phi1(s'), phi2(s)) / tau) (`PMICritic`) is trained on
expert transitions with InfoNCE (`infonce_loss`; van den Oord, Li, Vinyals 2018, arXiv 1807.03748, Eq. 4): the true
next state against `--num-negatives` other expert next states of the batch. Its optimum is f(s, s') proportional to
p(s'|s) / p(s') (CPC Eq. 2), so log f = PMI(s; s') + c(s): the expert's pointwise mutual information up to a per-state
constant c(s) that InfoNCE leaves free. The score is the seed's (a talk on imitation from observation): a DSSM-style
cosine, log f = cos(phi1(s'), phi2(s)) / T (its Eq. 19; `--critic-score cosine`, T = `--tau`), so every logit lies in
[-1/T, 1/T]. `--critic-score dot` keeps CPC's log-bilinear phi1(s')^T phi2(s) / tau (CPC Eq. 3) for comparison: a
deterministic expert's p(s'|s) is a spike, and the unnormalised towers then separate s' from the other expert next
states by hundreds of logits (`heldout_logit_margin` in critic.json), which saturates the softmax reward below unless
`--temperature` is raised to the margin's order. The policy is trained on a reward computed from the frozen critic,
for the whole rollout batch at once:
  --reward pmi       r = log f(s, s')                                                          (`pmi_reward`)
  --reward softmax   r = log-softmax of the true s' against K negatives (`softmax_reward`, +log, where the seed
                     writes -log: see there), plus log(K + 1) (`--reward-shift`): then log f(s, s') - log mean_j
                     f(s, s'_j), InfoNCE's per-sample PMI estimate, in which c(s) cancels; negatives s'_j from the
                     expert's next states, the agent's (its rollout batch: a contrast with the agent's own next-state
                     distribution) or half of each (--negatives)
`softmax` is the default: `pmi` carries c(s), a state-dependent offset that InfoNCE does not constrain. The shift
decides the reward's sign, which an episodic task reads as a reason to live (shifted: positive for expert-like steps;
CartPole, which ends on failure) or to finish (`--no-reward-shift`: the plain log-softmax <= 0, a per-step cost;
Acrobot and MountainCar, which end on success): the reward bias of Kostrikov et al. 2019 (arXiv 1809.02925, Sec. 4),
as with GAIL's two reward forms. The temperature is the same on every task (`--tau`).
The reinforcement learner is PPO with an entropy bonus (Schulman et al. 2017, arXiv 1707.06347, Eq. 7 `ppo_loss`,
the entropy term of Eq. 9, `--ent-coef`) on `--num-envs` vector envs with GAE advantages (`gae`, Schulman et al.
2016, arXiv 1506.02438, Eq. 16), after cleanrl/ppo.py (orthogonal init, annealed Adam, per-minibatch advantage
standardisation, gradient clipping, here per network); discrete and continuous (diagonal Gaussian) actions.

The critic is trained first (`--critic-steps`, on expert data only: nothing it learns depends on the agent), then
frozen, so the reward is stationary. Its quality is reported on held-out expert trajectories in runs/<run>/critic.json
(and `charts/`) as two top-1 next-state accuracies: `top1_reachable`, the seed's Eq. 20, ranks the true s_{t+1} among
the states reachable from s_t, one per action, replayed from s_t's restored simulator state
(`reachable_next_observations`; discrete classic-control envs, null elsewhere; chance 1/A); `top1_in_batch` ranks it
among the other next states of a held-out batch, an easier test (chance 1/batch) that a critic passes by knowing only
that s' lies near s. Observations are standardised with the training demos' mean and std for
every network. Gymnasium's next-step autoreset makes the step after an episode's end a reset that carries no
transition: it is masked out of every loss and not counted; the step that ends an episode returns its true final s',
which the critic scores; time-limit truncations bootstrap from V(s'), terminations do not.
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
from gymnasium.envs.classic_control import AcrobotEnv, CartPoleEnv, MountainCarEnv
from tqdm import tqdm

# the only expert arrays this script reads: never actions, which imitation from observation does not have
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
    total_timesteps: int = 100_000
    """budget of environment steps: floor(total / (num_envs * num_steps)) iterations run, so the transitions collected
    (autoreset steps left out) never exceed it"""
    eval_frequency: int = 10_000
    """evaluate the deterministic policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 10
    """number of expert demo episodes to imitate (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory"""

    # PMI critic f(s, s') = exp(cos(phi1(s'), phi2(s)) / tau) (or the dot product), trained by InfoNCE
    reward: Literal["pmi", "softmax"] = "softmax"
    """the agent's reward: `softmax` = log-softmax of s' against negatives (+ log(K + 1), `--reward-shift`), or `pmi` = log
    f(s, s')"""
    negatives: Literal["expert", "agent", "mixed"] = "expert"
    """`--reward softmax` only: negatives from the expert's next states, the agent's rollout batch, or half of each"""
    num_negatives: int = 64
    """negatives K per positive, in InfoNCE (other next states of the critic batch) and in the softmax reward"""
    temperature: float = 1.0
    """extra temperature of the softmax reward, on top of tau: log-softmax(log f / temperature); 1 reads the critic's own
    softmax, the one InfoNCE trained. `--critic-score dot` needs it of the order of the logit margin (critic.json), which
    reaches hundreds, for the reward not to saturate"""
    reward_shift: bool = True
    """`--reward softmax`: add log(K + 1), a reward positive for expert-like steps (tasks that end on failure, CartPole);
    `--no-reward-shift`: the plain log-softmax <= 0, a per-step cost (tasks that end on success, Acrobot, MountainCar)"""
    critic_score: Literal["cosine", "dot"] = "cosine"
    """`cosine`: log f = cos(phi1(s'), phi2(s)) / tau, the seed's DSSM-style score (its Eq. 19), bounded by 1 / tau;
    `dot`: the raw dot product of the embeddings, log f = phi1(s')^T phi2(s) / tau (CPC's log-bilinear model), unbounded"""
    tau: float = 0.2
    """temperature T of the critic, log f = score / T, in InfoNCE and in the reward. The seed divides its cosine by a
    temperature and fixes no value; cosine-scored contrastive losses use 0.05-0.5 (0.2: MoCo v2, arXiv 2003.04297).
    0.2 keeps the logits within +-5, near log(K + 1) = 4.2, so the softmax reward neither saturates nor goes flat, and
    one value serves CartPole-v1, Acrobot-v1 and MountainCar-v0"""
    embedding_dim: int = 32
    """output size of the two towers phi1 (next state) and phi2 (state)"""
    critic_hidden_size: int = 128
    """width of the two tanh hidden layers of each tower"""
    critic_learning_rate: float = 1e-3
    """the learning rate of the critic's Adam optimizer"""
    critic_steps: int = 2_000
    """InfoNCE gradient steps on the expert transitions, before the agent starts"""
    critic_batch_size: int = 256
    """expert transitions per InfoNCE step, and per held-out accuracy batch (capped at the number available)"""
    num_heldout_trajectories: int = 5
    """demo episodes after the training ones, held out for the critic's top-1 next-state accuracy"""

    # PPO (cleanrl/ppo.py), with an entropy bonus
    num_envs: int = 8
    """parallel environments (a gymnasium vector env) collecting each iteration's batch"""
    num_steps: int = 128
    """steps per environment per iteration (batch = num_envs * num_steps, less the autoreset steps)"""
    learning_rate: float = 1e-3
    """the learning rate of the policy and value function's Adam optimizer"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 over total_timesteps"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda of generalized advantage estimation"""
    num_minibatches: int = 4
    """minibatches per PPO epoch"""
    update_epochs: int = 10
    """passes over each batch"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient epsilon of Eq. 7"""
    ent_coef: float = 0.01
    """weight of the policy's entropy bonus (Eq. 9)"""
    vf_coef: float = 0.5
    """weight of the value function's loss"""
    max_grad_norm: float = 0.5
    """the maximum norm of the gradient (clipped)"""
    norm_adv: bool = True
    """standardise the advantages of each minibatch"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the policy and the value function"""
    normalize_observations: bool = True
    """standardise observations with the expert demos' mean and std (policy, value function, critic)"""


# --------------------------------------------------------------------------------------------------------- PMI-IL
def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    """Orthogonal initialisation, as cleanrl/ppo.py; std 0.01 on a policy's last layer gives a near-uniform initial
    policy, as the original code's zero-initialised output layers do."""
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
    """pi_theta(a|s) on standardised observations: a categorical over logits, or N(mu_theta(s), diag exp(2 log_std))
    with a state-independent log_std initialised at 0 (the original code's Gibbs and Gaussian policies)."""

    def __init__(self, obs_dim, action_space, hidden_size):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        out_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.network = mlp(obs_dim, out_dim, hidden_size, out_std=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(out_dim))

    def forward(self, obs):
        """The distribution's parameters: logits [B, A], or mean and log_std side by side [B, 2D]."""
        out = self.network(obs)
        return out if self.discrete else torch.cat([out, self.log_std.expand_as(out)], -1)

    def distribution(self, params):
        if self.discrete:
            return torch.distributions.Categorical(logits=params)
        mean, log_std = params.chunk(2, -1)
        return torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1)

    def deterministic_action(self, obs):
        out = self.network(obs)
        return out.argmax(-1) if self.discrete else out


class PMICritic(nn.Module):
    """The two towers of f(s, s') = exp(phi1(s')^T phi2(s) / tau). `score="cosine"` (the seed's DSSM-style Eq. 19)
    ends each tower with an L2 normalisation, so phi1(s')^T phi2(s) = cos(phi1(s'), phi2(s)) and every logit lies in
    [-1/tau, 1/tau] whatever the embeddings' scale; `score="dot"` keeps the raw dot product (CPC Eq. 3 with W folded
    into phi2), whose scale the towers learn freely."""

    def __init__(self, obs_dim, hidden_size, embedding_dim, score="cosine"):
        super().__init__()
        self.next_tower = mlp(obs_dim, embedding_dim, hidden_size, out_std=1.0)
        self.obs_tower = mlp(obs_dim, embedding_dim, hidden_size, out_std=1.0)
        self.cosine = score == "cosine"

    def phi1(self, next_obs):
        """Embeds the next state s'; [B, obs] -> [B, E]."""
        z = self.next_tower(next_obs)
        return F.normalize(z, dim=-1) if self.cosine else z

    def phi2(self, obs):
        """Embeds the state s; [B, obs] -> [B, E]."""
        z = self.obs_tower(obs)
        return F.normalize(z, dim=-1) if self.cosine else z


def infonce_loss(positive_logits, negative_logits):
    """CPC Eq. 4: -E[log f(s, s') / (f(s, s') + sum_j f(s, s'_j))] from logits log f of the positives [B] and of K
    negatives per positive [B, K]; minimised by f proportional to p(s'|s) / p(s') (Eq. 2)."""
    logits = torch.cat([positive_logits[:, None], negative_logits], 1)
    return -F.log_softmax(logits, 1)[:, 0].mean()


def pmi_reward(phi_next, phi_obs, tau):
    """r(s, s') = phi1(s')^T phi2(s) / tau = log f(s, s'): the expert's PMI log p(s'|s) / p(s') plus the per-state
    constant c(s) InfoNCE cannot identify. With the cosine critic's unit embeddings this is the seed's Eq. 19,
    cos(phi1(s'), phi2(s)) / T, |r| <= 1 / tau; phi_next [B, E], phi_obs [B, E] -> [B]."""
    return (phi_next * phi_obs).sum(-1) / tau


def softmax_reward(positive_logits, negative_logits, temperature):
    """log-softmax of the true next state's log f(s, s') / T among K negatives' log f(s, s'_j) / T; <= 0. Plus
    log(K + 1), at T = 1, it is log f(s, s') - log mean_{s', s'_j} f(s, .), the per-sample InfoNCE estimate of the
    PMI (c(s) cancels), 0 where s' is no likelier than the negatives. [B], [B, K] -> [B]."""
    # The seed writes this term with a minus sign, -log softmax (its Eq. 17, 18 and 21): maximised as a reward, that
    # would pay the agent most for the next states the critic finds least expert-like (it reads right only as a cost
    # to minimise). The reward here is +log softmax: high where the true s' stands out among the negatives, the
    # quantity the critic's InfoNCE training maximises on the expert's transitions.
    logits = torch.cat([positive_logits[:, None], negative_logits], 1) / temperature
    return F.log_softmax(logits, 1)[:, 0]


def top1_in_batch(phi_obs, phi_next):
    """Fraction of rows i whose true next state s'_i scores highest among all next states of the batch under
    f(s_i, .), i.e. argmax_j phi1(s'_j)^T phi2(s_i) == i (tau > 0 changes no ranking); [B, E], [B, E] -> scalar.
    Easy: the batch's other next states are mostly far from s_i, so a critic that only knows "s' lies near s" scores
    high here; `top1_reachable` is the seed's harder test."""
    scores = phi_obs @ phi_next.T
    return (scores.argmax(1) == torch.arange(len(scores), device=scores.device)).float().mean()


def simulator_state(env, obs):
    """The simulator state behind a classic-control observation, or None where the observation does not determine it
    (or the env is not one of these): CartPole and MountainCar observe their state, Acrobot its angles as cos and sin."""
    unwrapped = env.unwrapped
    if isinstance(unwrapped, AcrobotEnv):
        cos1, sin1, cos2, sin2, velocity1, velocity2 = np.asarray(obs, dtype=np.float64)
        return np.array([np.arctan2(sin1, cos1), np.arctan2(sin2, cos2), velocity1, velocity2])
    if isinstance(unwrapped, (CartPoleEnv, MountainCarEnv)):
        return np.array(obs, dtype=np.float64)
    return None


def reachable_next_observations(env, observations, next_observations, atol=1e-4):
    """The candidates of the seed's Eq. 20: from each s_t, the next observation of every action of a discrete env,
    replayed by restoring s_t's simulator state (`simulator_state`) and stepping the unwrapped env once per action.
    Returns candidates [N, A, obs] and true_index [N], the action whose replay reproduces the recorded s_{t+1}
    (within atol; -1 where none does), or (None, None) where the env cannot be restored. atol sits far below the
    smallest gap between two actions' next observations in these envs (MountainCar's 0.001 of velocity)."""
    if not isinstance(env.action_space, gym.spaces.Discrete) or simulator_state(env, observations[0]) is None:
        return None, None
    unwrapped = env.unwrapped
    env.reset(seed=0)  # the envs refuse to step before a reset
    candidates = np.zeros((len(observations), int(env.action_space.n), *observations.shape[1:]), dtype=np.float32)
    for i, obs in enumerate(observations):
        state = simulator_state(env, obs)
        for action in range(candidates.shape[1]):
            unwrapped.state = state.copy()
            if hasattr(unwrapped, "steps_beyond_terminated"):
                unwrapped.steps_beyond_terminated = None  # CartPole: a fresh step, not one after a termination
            candidates[i, action] = unwrapped.step(action)[0]
    distance = np.abs(candidates - next_observations[:, None]).reshape(*candidates.shape[:2], -1).max(-1)  # [N, A]
    return candidates, np.where(distance.min(1) <= atol, distance.argmin(1), -1)


def top1_reachable(scores, true_index):
    """The seed's Eq. 20: fraction of s_t whose true s_{t+1} scores highest among the states reachable from s_t.
    A tie at the top shares the hit (1 / number tied), so a critic that cannot tell the actions apart scores chance,
    1 / A; scores [N, A] of f(s_t, .) over the candidates, true_index [N] -> scalar."""
    best = scores == scores.max(1, keepdim=True).values
    return (best.gather(1, true_index[:, None]).squeeze(1) / best.sum(1)).mean()


def logit_margin(phi_obs, phi_next, tau):
    """Mean over rows i of log f(s_i, s'_i) - mean_{j != i} log f(s_i, s'_j): how far, in logits, the true next state
    stands above the batch's other next states. When it is much larger than T log(K + 1) the softmax reward saturates
    at 0 for every s' that continues s (see the module docstring); [B, E], [B, E] -> scalar."""
    logits = phi_obs @ phi_next.T / tau
    positive = logits.diagonal()
    return (positive - (logits.sum(1) - positive) / max(len(logits) - 1, 1)).mean()


def gae(rewards, values, next_values, terminations, dones, gamma, gae_lambda):
    """GAE(gamma, lambda) (Schulman et al. 2016, arXiv 1506.02438, Eq. 16): A_t = sum_l (gamma lambda)^l delta_{t+l},
    delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t), on [T, num_envs] tensors in time order.
    V(s'_t) is the value of the true next state, so a time-limit truncation bootstraps and only a termination zeroes
    it; the sum stops where an episode ends (dones_t: terminated or truncated) and at the end of the rollout."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * (1.0 - terminations[t]) * next_values[t] - values[t]
        running = delta + gamma * gae_lambda * (1.0 - dones[t]) * running
        advantages[t] = running
    return advantages


def value_loss(values, returns):
    """Regression of V_phi(s_t) on the GAE return A_t + V_old(s_t) (the TD(lambda) target): mean (V - R)^2."""
    return F.mse_loss(values, returns)


def ppo_loss(log_ratio, advantages, entropy, clip_coef, ent_coef):
    """-L^CLIP (PPO Eq. 7) - ent_coef * entropy (the S term of Eq. 9): -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)]
    - c2 E[H(pi(.|s))], rho = pi(a|s) / pi_old(a|s) = exp(log_ratio); all [B] -> scalar."""
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_coef, 1 + clip_coef) * advantages)
    return -surrogate.mean() - ent_coef * entropy.mean()


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
        "num_envs",
        "num_steps",
        "num_minibatches",
        "update_epochs",
        "num_negatives",
        "embedding_dim",
        "critic_batch_size",
        "num_heldout_trajectories",
        "hidden_size",
        "critic_hidden_size",
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
            f"error: pmi_il.py supports Discrete and Box actions, but {args.env_id} has {eval_env.action_space}; pick "
            f"another env."
        )
    if args.num_steps < 2 or args.critic_steps < 0 or args.tau <= 0 or args.temperature <= 0:
        # with 2 steps or more every env contributes a transition: only the step after an episode's end carries none
        sys.exit(
            f"error: --num-steps must be >= 2, --critic-steps >= 0 and --tau, --temperature > 0, got {args.num_steps}, "
            f"{args.critic_steps}, {args.tau}, {args.temperature}."
        )
    if args.total_timesteps < args.num_envs * args.num_steps:
        sys.exit(
            f"error: --total-timesteps {args.total_timesteps} is less than one iteration of --num-envs {args.num_envs} x "
            f"--num-steps {args.num_steps} = {args.num_envs * args.num_steps} steps; pass at least that, or lower either."
        )
    expert_info = load_expert_info(expert_dir, eval_env, required=True)
    demos = load_demos(expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, DEMO_KEYS)
    with np.load(expert_dir / "demos.npz") as npz:
        episode_starts = npz["episode_starts"]  # to find where the held-out episodes begin; actions stay unread
    num_trajectories = args.num_expert_trajectories + args.num_heldout_trajectories
    if num_trajectories > len(episode_starts):
        sys.exit(
            f"error: --num-expert-trajectories {args.num_expert_trajectories} plus --num-heldout-trajectories "
            f"{args.num_heldout_trajectories} exceed the {len(episode_starts)} episodes shipped in "
            f"{expert_dir / 'demos.npz'}; "
            f"lower either, or regenerate the expert with `{expert_command(args.env_id, expert_dir)} --num-demo-episodes "
            f"{num_trajectories} --overwrite`."
        )
    # the episodes right after the training ones, every transition (subsample_frequency 1: in order, so they start
    # where the first num_expert_trajectories episodes end)
    heldout = {
        key: value[episode_starts[args.num_expert_trajectories] :]
        for key, value in load_demos(expert_dir, eval_env, num_trajectories, 1, args.seed, DEMO_KEYS).items()
    }
    for key in DEMO_KEYS:
        if not (np.isfinite(demos[key]).all() and np.isfinite(heldout[key]).all()):
            sys.exit(
                f"error: {expert_dir / 'demos.npz'} holds non-finite {key}; regenerate it with "
                f"`{expert_command(args.env_id, expert_dir)} --overwrite`."
            )
    critic_batch_size = min(args.critic_batch_size, len(demos["observations"]))
    if args.num_negatives >= critic_batch_size:
        sys.exit(
            f"error: --num-negatives {args.num_negatives} needs critic batches of more than {args.num_negatives} expert "
            f"transitions "
            f"(its negatives are the batch's other next states), but a batch holds {critic_batch_size} (--critic-batch-size "
            f"{args.critic_batch_size}, {len(demos['observations'])} expert transitions); lower --num-negatives."
        )
    # next-step autoreset (gymnasium 1.x): the step() after an env's episode ends only resets it (action ignored,
    # reward 0, no transition); the step that ended the episode already returned its true final observation
    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    exit_on_stop_signals(run_dir)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    action_space = envs.single_action_space
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    expert_obs = torch.as_tensor(demos["observations"], dtype=torch.float32, device=device).flatten(1)
    if args.normalize_observations:
        # +1e-3 keeps near-constant observation dims (e.g. a pole the expert holds still) from blowing up, as TD3+BC does
        obs_mean, obs_std = expert_obs.mean(0), expert_obs.std(0) + 1e-3
    else:
        obs_mean, obs_std = torch.zeros(obs_dim, device=device), torch.ones(obs_dim, device=device)

    def normalize(obs):
        return (torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1) - obs_mean) / obs_std

    expert_obs, expert_next = normalize(demos["observations"]), normalize(demos["next_observations"])
    heldout_obs, heldout_next = normalize(heldout["observations"]), normalize(heldout["next_observations"])

    # CPC Eq. 4: InfoNCE on expert (s, s') pairs, K negatives per positive from the batch's other next states
    critic = PMICritic(obs_dim, args.critic_hidden_size, args.embedding_dim, args.critic_score).to(device)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_learning_rate)
    start_time = time.time()  # the critic's training counts towards the run's wall time
    arange = torch.arange(critic_batch_size, device=device)
    for _ in range(args.critic_steps):
        # distinct transitions, so that no negative is a copy of its positive
        index = torch.randperm(len(expert_obs), device=device)[:critic_batch_size]
        logits = (
            critic.phi2(expert_obs[index]) @ critic.phi1(expert_next[index]).T / args.tau
        )  # [B, B], positives on the diagonal
        negative_index = torch.rand(critic_batch_size, critic_batch_size - 1, device=device).argsort(1)[
            :, : args.num_negatives
        ]
        negative_index += negative_index >= arange[:, None]  # skip the diagonal
        critic_loss = infonce_loss(logits.diagonal(), logits.gather(1, negative_index))
        critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_optimizer.step()
    critic.requires_grad_(False)
    with torch.no_grad():
        # held-out top-1 accuracy among the other next states of shuffled batches of critic_batch_size (chance 1 / batch)
        correct, chance, margin = 0.0, 0.0, 0.0
        for index in torch.randperm(len(heldout_obs), device=device).split(critic_batch_size):
            phi_obs, phi_next = critic.phi2(heldout_obs[index]), critic.phi1(heldout_next[index])
            correct += float(top1_in_batch(phi_obs, phi_next)) * len(index)
            margin += float(logit_margin(phi_obs, phi_next, args.tau)) * len(index)
            chance += 1.0
        # Eq. 20: held-out top-1 accuracy among the states reachable from s_t, every held-out transition once (a few
        # thousand simulator steps); null where the env's state cannot be restored from an observation
        replay_env = gym.make(args.env_id)
        candidates, true_index = reachable_next_observations(replay_env, heldout["observations"], heldout["next_observations"])
        replay_env.close()
        reachable, reachable_transitions, reachable_chance = None, 0, None
        if candidates is not None and (true_index >= 0).any():
            matched = true_index >= 0
            num_matched, num_actions = candidates[matched].shape[:2]
            phi_candidates = critic.phi1(normalize(candidates[matched].reshape(num_matched * num_actions, -1)))
            phi_obs = critic.phi2(normalize(heldout["observations"][matched]))
            scores = (phi_obs[:, None] * phi_candidates.reshape(num_matched, num_actions, -1)).sum(-1)  # [N, A]
            reachable = float(top1_reachable(scores, torch.as_tensor(true_index[matched], device=device)))
            reachable_transitions, reachable_chance = num_matched, 1.0 / num_actions
        critic_report = {
            "top1_in_batch": correct / len(heldout_obs),
            "top1_in_batch_chance": chance / len(heldout_obs),
            "top1_reachable": reachable,
            "top1_reachable_chance": reachable_chance,
            "top1_reachable_transitions": reachable_transitions,
            "heldout_logit_margin": margin / len(heldout_obs),
            "heldout_trajectories": args.num_heldout_trajectories,
            "heldout_transitions": len(heldout_obs),
            "final_infonce_loss": float(critic_loss.detach()) if args.critic_steps else float("nan"),
            "infonce_loss_at_chance": float(np.log(args.num_negatives + 1)),
            "critic_steps": args.critic_steps,
            "critic_wall_time_s": time.time() - start_time,
        }
        expert_next_embedding = critic.phi1(expert_next)  # the expert negatives of the softmax reward, fixed from now on
    if not np.isfinite(critic_report["final_infonce_loss"]) and args.critic_steps:
        sys.exit(
            f"error: non-finite InfoNCE loss after {args.critic_steps} critic steps; lower --critic-learning-rate or raise "
            f"--tau."
        )
    (run_dir / "critic.json").write_text(json.dumps(critic_report, indent=2) + "\n")
    reachable_text = (
        "" if reachable is None else f", among the reachable states {reachable:.3f} (chance {reachable_chance:.3f})"
    )
    print(
        f"critic: held-out top-1 next-state accuracy in batch {critic_report['top1_in_batch']:.3f} (chance "
        f"{critic_report['top1_in_batch_chance']:.3f}){reachable_text}, InfoNCE loss "
        f"{critic_report['final_infonce_loss']:.3f} "
        f"(chance {critic_report['infonce_loss_at_chance']:.3f}), logit margin {critic_report['heldout_logit_margin']:.1f}"
    )
    log_metrics(
        args.track,
        {
            "charts/top1_in_batch": critic_report["top1_in_batch"],
            "losses/infonce_loss": critic_report["final_infonce_loss"],
            **({} if reachable is None else {"charts/top1_reachable": reachable}),
        },
        0,
    )

    policy = Policy(obs_dim, action_space, args.hidden_size).to(device)
    value_network = mlp(obs_dim, 1, args.hidden_size, out_std=1.0).to(device)
    optimizer = torch.optim.Adam([*policy.parameters(), *value_network.parameters()], lr=args.learning_rate, eps=1e-5)
    if not discrete:
        low, high = action_space.low, action_space.high
    eval_rows = []

    # rollout storage, [num_steps, num_envs, ...] on the training device
    shape = (args.num_steps, args.num_envs)
    b_obs = torch.zeros(*shape, obs_dim, device=device)
    b_next_obs = torch.zeros(*shape, obs_dim, device=device)
    b_actions = torch.zeros(shape + action_space.shape, dtype=torch.long if discrete else torch.float32, device=device)
    b_log_probs, b_terminations, b_dones, b_valid = (torch.zeros(shape, device=device) for _ in range(4))

    @torch.no_grad()
    def act_deterministic(obs):
        action = policy.deterministic_action(normalize(obs)).cpu().numpy()
        return action if discrete else np.clip(action.reshape((len(obs), *low.shape)), low, high)

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

    hardware = hardware_info(device)
    print(
        f"{run_name}: {hardware['device']} ({hardware['device_name']}), {hardware['threads']} thread(s), "
        f"{hardware['precision']}",
        file=sys.stderr,
    )
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    obs, _ = envs.reset(seed=args.seed)
    valid = np.ones(args.num_envs, dtype=bool)  # False where the coming step() is an autoreset
    global_step = 0
    num_iterations = args.total_timesteps // (args.num_envs * args.num_steps)
    for iteration in range(1, num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * max(1.0 - global_step / args.total_timesteps, 0.0)
        episode_returns = []
        for step in range(args.num_steps):
            obs_t = normalize(obs)
            with torch.no_grad():
                distribution = policy.distribution(policy(obs_t))
                action = distribution.sample()
                b_log_probs[step] = distribution.log_prob(action)
            action_np = action.cpu().numpy()
            # the Gaussian's sample is clipped for the env only; PPO's likelihood ratio stays that of the sample
            next_obs, _, terminated, truncated, infos = envs.step(action_np if discrete else np.clip(action_np, low, high))
            b_obs[step], b_next_obs[step], b_actions[step] = obs_t, normalize(next_obs), action
            b_terminations[step] = torch.as_tensor(terminated, dtype=torch.float32, device=device)
            b_dones[step] = torch.as_tensor(terminated | truncated, dtype=torch.float32, device=device)
            b_valid[step] = torch.as_tensor(valid, dtype=torch.float32, device=device)
            if "episode" in infos:
                episode_returns.extend(infos["episode"]["r"][infos["_episode"]])
            valid = ~(terminated | truncated)
            obs = next_obs
        mask = b_valid.bool()
        obs_batch, actions_batch, old_log_probs = b_obs[mask], b_actions[mask], b_log_probs[mask]

        # the learned reward of every transition of the batch at once, from the frozen critic
        with torch.no_grad():
            phi_obs, phi_next = critic.phi2(obs_batch), critic.phi1(b_next_obs[mask])
            if args.reward == "pmi":
                learned = pmi_reward(phi_next, phi_obs, args.tau)
            else:
                num_expert = {"expert": args.num_negatives, "agent": 0, "mixed": args.num_negatives // 2}[args.negatives]
                num_agent = args.num_negatives - num_expert
                # K next states per transition, drawn with replacement: the expert's, and/or the agent's own batch
                # (a sample of the agent's next-state distribution, to which each transition's own s' belongs)
                expert_index = torch.randint(len(expert_next_embedding), (len(phi_obs), num_expert), device=device)
                agent_index = torch.randint(len(phi_next), (len(phi_obs), num_agent), device=device)
                negatives = torch.cat([expert_next_embedding[expert_index], phi_next[agent_index]], 1)  # [B, K, E]
                negative_logits = pmi_reward(negatives, phi_obs[:, None], args.tau)
                learned = softmax_reward(pmi_reward(phi_next, phi_obs, args.tau), negative_logits, args.temperature)
                if args.reward_shift:
                    learned += np.log(args.num_negatives + 1)
            rewards = torch.zeros(shape, device=device)
            rewards[mask] = learned
            values = value_network(b_obs).squeeze(-1)
            advantages = gae(
                rewards, values, value_network(b_next_obs).squeeze(-1), b_terminations, b_dones, args.gamma, args.gae_lambda
            )
            returns = (advantages + values)[mask]
            advantages = advantages[mask]

        # PPO Eq. 9: clipped surrogate + entropy bonus, and the value function, on minibatches for update_epochs epochs
        for _ in range(args.update_epochs):
            for index in torch.randperm(len(returns), device=device).chunk(args.num_minibatches):
                distribution = policy.distribution(policy(obs_batch[index]))
                log_ratio = distribution.log_prob(actions_batch[index]) - old_log_probs[index]
                mb_advantages = advantages[index]
                if args.norm_adv and len(index) > 1:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                entropy = distribution.entropy()
                pg_loss = ppo_loss(log_ratio, mb_advantages, entropy, args.clip_coef, args.ent_coef)
                v_loss = value_loss(value_network(obs_batch[index]).squeeze(-1), returns[index])
                optimizer.zero_grad(set_to_none=True)
                (pg_loss + args.vf_coef * v_loss).backward()
                # each network clipped on its own: the value loss, on returns of up to log(K + 1) / (1 - gamma), would
                # otherwise dominate the joint norm and scale the policy's gradient down to nothing
                nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
                nn.utils.clip_grad_norm_(value_network.parameters(), args.max_grad_norm)
                optimizer.step()

        with torch.no_grad():
            stats = {
                "losses/policy_loss": pg_loss.detach(),
                "losses/value_loss": v_loss.detach(),
                "losses/entropy": entropy.mean(),
                "losses/approx_kl": ((log_ratio.exp() - 1) - log_ratio).mean(),
                "losses/clipfrac": ((log_ratio.exp() - 1).abs() > args.clip_coef).float().mean(),
                "charts/learned_reward": learned.mean(),
            }
        exit_if_non_finite(
            stats.values(),
            f"error: non-finite training statistics at iteration {iteration} "
            f"({ {k: float(v) for k, v in stats.items()} }); "
            f"lower --learning-rate.",
        )
        num_steps = int(mask.sum())
        global_step += num_steps
        progress.update(num_steps)
        log = {
            **stats,
            "charts/SPS": global_step / (time.time() - start_time),
            "charts/learning_rate": optimizer.param_groups[0]["lr"],
        }
        if episode_returns:
            log["charts/episodic_return"] = np.mean(episode_returns)
        log_metrics(args.track, log, global_step)
        if (
            global_step // args.eval_frequency > (global_step - num_steps) // args.eval_frequency
            or iteration == num_iterations
        ):
            run_evaluation(global_step)
    progress.total = global_step  # autoreset steps fell short of the budget: the bar ends at 100%
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = global_step / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, hardware)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    envs.close()
    eval_env.close()
    if args.track:
        wandb.finish()
