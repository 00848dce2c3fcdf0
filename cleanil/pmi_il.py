"""PMI imitation from observation: reward the agent with the expert's pointwise mutual information of (s_t, s_{t+1}).

The demonstrations hold the expert's states only (`DEMO_KEYS`). A two-tower critic f(s, s') =
exp(score(phi1(s'), phi2(s)) / tau) (`PMICritic`) learns by InfoNCE (`infonce_loss`; van den Oord, Li, Vinyals 2018,
arXiv 1807.03748, Eq. 4) to pick each expert s' among other expert next states; its optimum, f proportional to
p(s'|s) / p(s') (CPC Eq. 2), makes log f = PMI(s; s') + c(s), c(s) a per-state constant left free. The score is the
seed's (a talk on imitation from observation) DSSM-style cosine over tau (its Eq. 19), or CPC's log-bilinear one
(`--critic-score dot`, Eq. 3). The critic is trained first, then frozen, and rewards the agent (`learned_reward`) with
  --reward pmi       r = log f(s, s')                                                            (`pmi_reward`)
  --reward softmax   r = log-softmax of the true s' against K negatives + log(K + 1) (`softmax_reward`): log f(s, s') -
                     log mean_j f(s, s'_j), InfoNCE's per-sample PMI estimate, in which c(s) cancels; negatives from
                     the expert's next states, the agent's rollout batch, or half of each
`--no-reward-shift` makes it a cost, for tasks that end on success (the reward bias of arXiv 1809.02925, Sec. 4).
critic.json rates the critic on held-out episodes (`critic_report`): `top1_reachable`, the seed's Eq. 20, ranks the true
s_{t+1} among the states each action reaches from s_t (`reachable_next_observations`); `top1_in_batch` among a held-out
batch's next states. The learner is PPO with an entropy bonus (Schulman et al. 2017, arXiv 1707.06347, Eqs. 7, 9,
`ppo_loss`) and GAE (`gae`) after cleanrl/ppo.py, on observations standardised with the demos' statistics.
"""

import json
import os
import random
import shlex
import shutil
import subprocess
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
    """budget of environment steps: floor(total / (num_envs * num_steps)) iterations, autoreset steps not counted"""
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
    any_env: bool = False
    """use an expert folder recorded on another env id (e.g. Hopper-v4 demos for Hopper-v5) when its shapes fit"""

    # PMI critic f(s, s') = exp(cos(phi1(s'), phi2(s)) / tau) (or the dot product), trained by InfoNCE
    reward: Literal["pmi", "softmax"] = "softmax"
    """the agent's reward: `softmax` = log-softmax of s' against negatives (+ log(K + 1)), or `pmi` = log f(s, s')"""
    negatives: Literal["expert", "agent", "mixed"] = "expert"
    """`--reward softmax` only: negatives from the expert's next states, the agent's rollout batch, or half of each"""
    num_negatives: int = 64
    """negatives K per positive, in InfoNCE (other next states of the critic batch) and in the softmax reward"""
    temperature: float = 1.0
    """extra temperature of the softmax reward, log-softmax(log f / temperature); `--critic-score dot` needs ~ its margin"""
    reward_shift: bool = True
    """`--reward softmax`: add log(K + 1) (a reward for tasks that end on failure; off: a per-step cost, <= 0)"""
    critic_score: Literal["cosine", "dot"] = "cosine"
    """log f = cos(phi1(s'), phi2(s)) / tau (the seed's Eq. 19, bounded) or phi1(s')^T phi2(s) / tau (CPC's, unbounded)"""
    tau: float = 0.2
    """temperature of the critic, log f = score / tau (0.2, MoCo v2's: cosine logits within +-5, near log(K + 1) = 4.2)"""
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
class PMICritic(nn.Module):
    """The two towers of f(s, s') = exp(phi1(s')^T phi2(s) / tau): L2-normalised for `score="cosine"` (the seed's
    Eq. 19: every logit a cosine over tau), raw for `score="dot"` (CPC Eq. 3 with W folded into phi2)."""

    def __init__(self, obs_dim, hidden_size, embedding_dim, score="cosine"):
        super().__init__()
        self.next_tower = mlp(obs_dim, embedding_dim, hidden_size, out_std=1.0)
        self.obs_tower = mlp(obs_dim, embedding_dim, hidden_size, out_std=1.0)
        self.cosine = score == "cosine"

    def phi1(self, next_obs):  # the next state's embedding, [B, obs] -> [B, E]
        return F.normalize(self.next_tower(next_obs), dim=-1) if self.cosine else self.next_tower(next_obs)

    def phi2(self, obs):  # the state's embedding, [B, obs] -> [B, E]
        return F.normalize(self.obs_tower(obs), dim=-1) if self.cosine else self.obs_tower(obs)


def infonce_loss(positive_logits, negative_logits):
    """CPC Eq. 4, -E[log f(s, s') / (f(s, s') + sum_j f(s, s'_j))], from logits log f of positives [B] and negatives [B, K]."""
    logits = torch.cat([positive_logits[:, None], negative_logits], 1)
    return -F.log_softmax(logits, 1)[:, 0].mean()


def pmi_reward(phi_next, phi_obs, tau):
    """r(s, s') = phi1(s')^T phi2(s) / tau = log f(s, s'): the expert's PMI log p(s'|s) / p(s') plus the per-state
    constant c(s) InfoNCE cannot identify (the seed's Eq. 19 with the cosine critic); [B, E], [B, E] -> [B]."""
    return (phi_next * phi_obs).sum(-1) / tau


def softmax_reward(positive_logits, negative_logits, temperature):
    """log-softmax of the true next state's log f(s, s') / T among K negatives' log f(s, s'_j) / T, <= 0; plus log(K + 1),
    at T = 1, log f(s, s') - log mean f(s, .), InfoNCE's per-sample PMI estimate (c(s) cancels); [B], [B, K] -> [B]."""
    # The seed writes -log softmax (its Eqs. 17, 18, 21), which as a reward would pay most for the least expert-like s';
    # +log softmax is high where the true s' stands out among the negatives, as InfoNCE trained the critic
    logits = torch.cat([positive_logits[:, None], negative_logits], 1) / temperature
    return F.log_softmax(logits, 1)[:, 0]


@torch.no_grad()
def learned_reward(critic, obs, next_obs, expert_phi_next, args):
    """The agent's reward for its batch of transitions (s, s') [B, obs] from the frozen critic: log f(s, s') (`--reward
    pmi`), or the softmax reward of each s' against K negatives drawn with replacement, K_expert of the expert's next
    states (expert_phi_next [N, E]) and the rest from the agent's own batch (a sample of its next-state distribution)."""
    phi_obs, phi_next = critic.phi2(obs), critic.phi1(next_obs)
    if args.reward == "pmi":
        return pmi_reward(phi_next, phi_obs, args.tau)
    num_expert = {"expert": args.num_negatives, "agent": 0, "mixed": args.num_negatives // 2}[args.negatives]
    expert_index = torch.randint(len(expert_phi_next), (len(obs), num_expert), device=obs.device)
    agent_index = torch.randint(len(phi_next), (len(obs), args.num_negatives - num_expert), device=obs.device)
    negatives = torch.cat([expert_phi_next[expert_index], phi_next[agent_index]], 1)  # [B, K, E]
    negative_logits = pmi_reward(negatives, phi_obs[:, None], args.tau)
    reward = softmax_reward(pmi_reward(phi_next, phi_obs, args.tau), negative_logits, args.temperature)
    return reward + np.log(args.num_negatives + 1) if args.reward_shift else reward


def top1_in_batch(phi_obs, phi_next):
    """Fraction of rows i whose true next state s'_i scores highest under f(s_i, .) among the batch's; [B, E] x 2 -> scalar."""
    scores = phi_obs @ phi_next.T
    return (scores.argmax(1) == torch.arange(len(scores), device=scores.device)).float().mean()


def logit_margin(phi_obs, phi_next, tau):
    """Mean of log f(s_i, s'_i) - mean_{j != i} log f(s_i, s'_j); far above T log(K + 1) the softmax reward saturates."""
    logits = phi_obs @ phi_next.T / tau
    positive = logits.diagonal()
    return (positive - (logits.sum(1) - positive) / max(len(logits) - 1, 1)).mean()


def reachable_next_observations(env, observations, next_observations, atol=1e-4):
    """The candidates of the seed's Eq. 20: from each s_t, the next observation of every action of a discrete env,
    replayed from s_t's restored simulator state. Returns candidates [N, A, obs] and true_index [N], the action whose
    replay reproduces the recorded s_{t+1} within atol (-1 where none does), or (None, None) where nothing can be replayed."""
    unwrapped, restorable = env.unwrapped, (AcrobotEnv, CartPoleEnv, MountainCarEnv)
    if not (isinstance(env.action_space, gym.spaces.Discrete) and isinstance(unwrapped, restorable)):
        return None, None
    env.reset(seed=0)  # the envs refuse to step before a reset
    candidates = np.zeros((len(observations), int(env.action_space.n), *observations.shape[1:]), dtype=np.float32)
    states = np.asarray(observations, dtype=np.float64)  # CartPole and MountainCar observe their state
    if isinstance(unwrapped, AcrobotEnv):  # Acrobot its two angles as cos and sin, then their velocities
        states = np.concatenate([np.arctan2(states[:, [1, 3]], states[:, [0, 2]]), states[:, 4:]], 1)
    for i, state in enumerate(states):
        for action in range(candidates.shape[1]):
            unwrapped.state = state.copy()
            if hasattr(unwrapped, "steps_beyond_terminated"):
                unwrapped.steps_beyond_terminated = None  # CartPole: a fresh step, not one after a termination
            candidates[i, action] = unwrapped.step(action)[0]
    distance = np.abs(candidates - next_observations[:, None]).reshape(*candidates.shape[:2], -1).max(-1)  # [N, A]
    return candidates, np.where(distance.min(1) <= atol, distance.argmin(1), -1)


def top1_reachable(scores, true_index):
    """The seed's Eq. 20: fraction of s_t whose true s_{t+1} scores highest among those reachable, ties sharing the hit."""
    best = scores == scores.max(1, keepdim=True).values
    return (best.gather(1, true_index[:, None]).squeeze(1) / best.sum(1)).mean()


@torch.no_grad()
def critic_report(critic, env_id, observations, next_observations, normalize, batch_size, tau):
    """critic.json's rating on held-out expert transitions (raw observations [N, obs]): top-1 in shuffled batches of
    batch_size and its logit margin, and top-1 among the reachable next states (null where they cannot be replayed)."""
    obs, next_obs = normalize(observations), normalize(next_observations)
    correct, chance, margin = 0.0, 0.0, 0.0
    for index in torch.randperm(len(obs), device=obs.device).split(batch_size):
        phi_obs, phi_next = critic.phi2(obs[index]), critic.phi1(next_obs[index])
        correct += float(top1_in_batch(phi_obs, phi_next)) * len(index)
        margin += float(logit_margin(phi_obs, phi_next, tau)) * len(index)
        chance += 1.0
    n = len(obs)
    report = {"top1_in_batch": correct / n, "top1_in_batch_chance": chance / n, "heldout_logit_margin": margin / n}
    report.update(top1_reachable=None, top1_reachable_chance=None, top1_reachable_transitions=0, heldout_transitions=n)
    candidates, true_index = reachable_next_observations(gym.make(env_id), observations, next_observations)
    if candidates is not None and (true_index >= 0).any():
        matched = true_index >= 0
        num_matched, num_actions = candidates[matched].shape[:2]
        phi_candidates = critic.phi1(normalize(candidates[matched].reshape(num_matched * num_actions, -1)))
        scores = (critic.phi2(obs[matched])[:, None] * phi_candidates.reshape(num_matched, num_actions, -1)).sum(-1)  # [N, A]
        top1 = float(top1_reachable(scores, torch.as_tensor(true_index[matched], device=obs.device)))
        report.update(top1_reachable=top1, top1_reachable_chance=1 / num_actions, top1_reachable_transitions=num_matched)
    return report


# ------------------------------------------------------------- PPO (cleanrl/ppo.py): policy, GAE, value function, loss
def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    """Orthogonal initialisation, as cleanrl/ppo.py (std 0.01 on a last layer: a near-uniform initial policy)."""
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
    """pi_theta(a|s): a categorical over logits, or N(mu_theta(s), diag exp(2 log_std)) with a state-independent log_std."""

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


def gae(rewards, values, next_values, terminations, dones, gamma, gae_lambda):
    """GAE (arXiv 1506.02438, Eq. 16) on [T, num_envs] tensors: A_t = sum_l (gamma lambda)^l delta_{t+l}, delta_t =
    r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t), so a truncation bootstraps; the sum stops where an episode ends."""
    advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * (1.0 - terminations[t]) * next_values[t] - values[t]
        running = delta + gamma * gae_lambda * (1.0 - dones[t]) * running
        advantages[t] = running
    return advantages


def ppo_loss(log_ratio, advantages, entropy, clip_coef, ent_coef):
    """-L^CLIP (PPO Eq. 7) - ent_coef * entropy (the S term of Eq. 9): -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)]
    - c2 E[H(pi(.|s))], rho = pi(a|s) / pi_old(a|s) = exp(log_ratio); all [B] -> scalar."""
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_coef, 1 + clip_coef) * advantages)
    return -surrogate.mean() - ent_coef * entropy.mean()


# ---------------------------------------------------- shared plumbing (identical in every script; tests/test_shared_blocks.py)
def make_env(env_id, seed, capture_video=False, run_name="", video_every=1):
    try:
        env = gym.make(env_id, render_mode="rgb_array" if capture_video else None)
    except gym.error.Error as error:
        sys.exit(f"error: unknown environment id {env_id!r} ({error}); use a registered Gymnasium id such as Hopper-v4.")
    if capture_video:  # the first episode of every evaluation (the eval env runs video_every = eval_episodes episodes)
        env = gym.wrappers.RecordVideo(env, f"videos/{run_name}", episode_trigger=lambda episode: episode % video_every == 0)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env.action_space.seed(seed)
    return env


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


def load_expert(expert_dir, env, num_trajectories, subsample_frequency, seed, keys, any_env=False):
    """(expert.json, demos): `keys` of the first num_trajectories episodes of demos.npz, every subsample_frequency-th
    transition from a random offset per episode (GAIL's subsampled demos). Cheap checks; `demos.py --check` does the rest."""
    try:
        info = json.loads((Path(expert_dir) / "expert.json").read_text())
        if info["env_id"] != env.spec.id and not any_env:
            raise ValueError(f"it was recorded on {info['env_id']}, not {env.spec.id} (--any-env uses it anyway)")
        gap = info["expert_return_mean"] - info["random_return_mean"]
        if not np.isfinite(gap) or gap == 0:
            raise ValueError("its expert_return_mean and random_return_mean define no normalized score")
        with np.load(Path(expert_dir) / "demos.npz") as data:
            starts, demos = data["episode_starts"], {key: data[key] for key in keys}
        obs_shape, space = env.observation_space.shape, env.action_space
        shapes = {"observations": obs_shape, "next_observations": obs_shape, "actions": space.shape}
        for key, value in demos.items():
            if value.shape[1:] != shapes.get(key, ()) or not np.isfinite(value).all():
                raise ValueError(f"its {key} are not finite or not of shape (N, *{shapes.get(key, ())})")
        low, high = (space.low, space.high) if isinstance(space, gym.spaces.Box) else (0, space.n - 1)
        if "actions" in demos and not ((low <= demos["actions"]) & (demos["actions"] <= high)).all():
            raise ValueError(f"its actions leave the action space {space}")
        if not 1 <= num_trajectories <= len(starts):
            raise ValueError(f"--num-expert-trajectories {num_trajectories} is not between 1 and its {len(starts)} episodes")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        check = f"python cleanil/demos.py --check {shlex.quote(str(expert_dir))}"
        sys.exit(f"error: {expert_dir} is not a usable expert folder: {error}; `{check}` says what to fix.")
    rng = np.random.default_rng(seed)
    episodes = np.split(np.arange(len(demos[keys[0]])), starts[1:])[:num_trajectories]
    index = np.concatenate([ep[rng.integers(min(subsample_frequency, len(ep))) :: subsample_frequency] for ep in episodes])
    # float16 demos (a large env's, stored small) come back as the float32 the networks compute in
    demos = {key: value[index] for key, value in demos.items()}
    return info, {key: value.astype(np.float32) if value.dtype == np.float16 else value for key, value in demos.items()}


def normalized_score(episode_return, info):
    """(R - R_random) / (R_expert - R_random) with expert.json's returns (DESIGN.md); NaN without an expert."""
    if info is None:
        return float("nan")
    return (episode_return - info["random_return_mean"]) / (info["expert_return_mean"] - info["random_return_mean"])


def write_eval_row(run_dir, row):
    """Append one evaluation to eval.csv, flushed at once so a killed run keeps what it measured."""
    path = Path(run_dir) / "eval.csv"
    header = "" if path.exists() else ",".join(row) + "\n"
    values = [f"{value:.10g}" if isinstance(value, float) else str(value) for value in row.values()]
    with open(path, "a") as f:
        f.write(header + ",".join(values) + "\n")


def write_summary(run_dir, args, eval_rows, wall_time, sps, device, precision, **extra):
    """summary.json: args, final and best scores, wall time, mean SPS, device, precision, the code's git commit, extra."""
    scores = [row["normalized_score"] for row in eval_rows]
    git = ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip() if shutil.which("git") else ""
    summary = {
        "args": asdict(args),
        "device": str(device),
        "precision": precision,
        "commit": commit or None,
        "final_return": eval_rows[-1]["eval_return_mean"],
        "final_normalized_score": scores[-1],
        "best_normalized_score": max(scores) if not np.isnan(scores).all() else float("nan"),
        "total_wall_time_s": wall_time,
        "mean_sps": sps,
        **extra,
    }
    summary = json.loads(json.dumps(summary), parse_constant=lambda constant: None)  # strict JSON: NaN -> null
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    args = tyro.cli(Args)
    positive = ("total_timesteps", "eval_frequency", "eval_episodes", "num_envs", "num_minibatches", "update_epochs")
    for name in (*positive, "num_negatives", "embedding_dim", "critic_batch_size", "num_heldout_trajectories", "hidden_size"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    # with 2 steps or more every env contributes a transition: only the step after an episode's end carries none
    if args.num_steps < 2 or args.critic_steps < 0 or min(args.tau, args.temperature, args.critic_hidden_size) <= 0:
        sys.exit("error: --num-steps must be >= 2, --critic-steps >= 0 and --tau, --temperature, --critic-hidden-size > 0.")
    if args.total_timesteps < args.num_envs * args.num_steps:
        iteration = f"--num-envs {args.num_envs} x --num-steps {args.num_steps}"
        sys.exit(f"error: --total-timesteps {args.total_timesteps} is less than one iteration of {iteration}; raise it.")
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
        sys.exit(f"error: pmi_il.py supports Discrete and Box actions, but {args.env_id} has {eval_env.action_space}.")
    n = args.num_expert_trajectories
    info, demos = load_expert(expert_dir, eval_env, n, args.subsample_frequency, args.seed, DEMO_KEYS, args.any_env)
    # held out: every transition of the episodes right after the training ones
    _, first = load_expert(expert_dir, eval_env, n, 1, args.seed, DEMO_KEYS, args.any_env)
    _, heldout = load_expert(expert_dir, eval_env, n + args.num_heldout_trajectories, 1, args.seed, DEMO_KEYS, args.any_env)
    heldout = {key: value[len(first[key]) :] for key, value in heldout.items()}
    critic_batch_size = min(args.critic_batch_size, len(demos["observations"]))
    if args.num_negatives >= critic_batch_size:
        sys.exit(f"error: --num-negatives {args.num_negatives} must be below the critic batch size, {critic_batch_size}.")
    # next-step autoreset: the step() after an episode's end only resets that env; the step that ended it returned s'
    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    action_space, obs_dim = envs.single_action_space, int(np.prod(envs.single_observation_space.shape))
    expert_obs = torch.as_tensor(demos["observations"], dtype=torch.float32, device=device).flatten(1)
    # +1e-3 keeps near-constant observation dims (e.g. a pole the expert holds still) from blowing up, as TD3+BC does
    obs_mean, obs_std = (expert_obs.mean(0), expert_obs.std(0) + 1e-3) if args.normalize_observations else (0.0, 1.0)
    normalize = lambda obs: (torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1) - obs_mean) / obs_std
    expert_obs, expert_next = normalize(demos["observations"]), normalize(demos["next_observations"])

    # the critic first, on expert (s, s') only, then frozen
    critic = PMICritic(obs_dim, args.critic_hidden_size, args.embedding_dim, args.critic_score).to(device)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_learning_rate)
    start_time, infonce = time.time(), torch.tensor(float("nan"))  # the critic's training counts towards the wall time
    for _ in range(args.critic_steps):  # CPC Eq. 4, each s' against K other next states of the batch
        index = torch.randperm(len(expert_obs), device=device)[:critic_batch_size]  # distinct: no negative is its positive
        logits = critic.phi2(expert_obs[index]) @ critic.phi1(expert_next[index]).T / args.tau  # [B, B], positives diagonal
        negative_index = torch.rand(len(index), len(index) - 1, device=device).argsort(1)[:, : args.num_negatives]
        negative_index += negative_index >= torch.arange(len(index), device=device)[:, None]  # skip the diagonal
        infonce = infonce_loss(logits.diagonal(), logits.gather(1, negative_index))
        critic_optimizer.zero_grad(set_to_none=True)
        infonce.backward()
        critic_optimizer.step()
    if args.critic_steps and not torch.isfinite(infonce):
        sys.exit("error: non-finite InfoNCE loss; lower --critic-learning-rate or raise --tau.")
    report = critic_report(critic, args.env_id, *heldout.values(), normalize, critic_batch_size, args.tau)
    report.update(final_infonce_loss=float(infonce), infonce_loss_at_chance=float(np.log(args.num_negatives + 1)))
    (run_dir / "critic.json").write_text(json.dumps({**report, "critic_wall_time_s": time.time() - start_time}, indent=2))
    print(f"critic: held-out top-1 in batch {report['top1_in_batch']:.3f}, reachable {report['top1_reachable']}")
    if args.track:
        wandb.log({f"critic/{key}": value for key, value in report.items() if value is not None}, step=0)
    expert_next_embedding = critic.phi1(expert_next).detach()  # the expert negatives of the softmax reward

    policy = Policy(obs_dim, action_space, args.hidden_size).to(device)
    value_network = mlp(obs_dim, 1, args.hidden_size, out_std=1.0).to(device)
    optimizer = torch.optim.Adam([*policy.parameters(), *value_network.parameters()], lr=args.learning_rate, eps=1e-5)
    low, high = (None, None) if discrete else (action_space.low, action_space.high)
    eval_rows, precision = [], "fp32"

    @torch.no_grad()
    def act_deterministic(obs):
        out = policy.network(normalize(obs)).cpu().numpy()
        return out.argmax(-1) if discrete else np.clip(out.reshape((len(obs), *low.shape)), low, high)

    def run_evaluation(global_step):
        returns = evaluate(act_deterministic, eval_env, args.eval_episodes, args.seed + 10_000)
        wall_time = time.time() - start_time
        row = {
            "global_step": global_step,
            "eval_return_mean": float(returns.mean()),
            "eval_return_std": float(returns.std()),
            "normalized_score": normalized_score(float(returns.mean()), info),
            "wall_time": wall_time,
            "sps": global_step / max(wall_time, 1e-9),
        }
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        if args.track:
            wandb.log({"eval/return": returns.mean(), "eval/normalized_score": row["normalized_score"]}, step=global_step)
        progress.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    obs, _ = envs.reset(seed=args.seed)
    valid = np.ones(args.num_envs, dtype=bool)  # False where the coming step() is an autoreset
    global_step, num_iterations = 0, args.total_timesteps // (args.num_envs * args.num_steps)
    for iteration in range(1, num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * max(1.0 - global_step / args.total_timesteps, 0.0)
        steps = []
        for step in range(args.num_steps):
            obs_t = normalize(obs)
            with torch.no_grad():
                distribution = policy.distribution(obs_t)
                action = distribution.sample()
            # the Gaussian's sample is clipped for the env only; PPO's likelihood ratio stays that of the sample
            action_np = action.cpu().numpy() if discrete else np.clip(action.cpu().numpy(), low, high)
            next_obs, _, terminated, truncated, _ = envs.step(action_np)
            done = terminated | truncated
            steps.append((obs_t, normalize(next_obs), action, distribution.log_prob(action), terminated, done, valid))
            obs, valid = next_obs, ~done
        columns = list(zip(*steps))  # [num_steps, num_envs, ...] each
        b_obs, b_next_obs, b_actions, b_log_probs = map(torch.stack, columns[:4])
        b_terminations, b_dones = (torch.as_tensor(np.array(c, dtype=np.float32), device=device) for c in columns[4:6])
        mask = torch.as_tensor(np.array(columns[6]), device=device)  # valid: not the autoreset step after an episode's end
        obs_batch, actions_batch, old_log_probs = b_obs[mask], b_actions[mask], b_log_probs[mask]

        with torch.no_grad():  # the learned reward of the whole batch at once, from the frozen critic
            rewards = torch.zeros(mask.shape, device=device)
            rewards[mask] = learned = learned_reward(critic, obs_batch, b_next_obs[mask], expert_next_embedding, args)
            values, next_values = value_network(b_obs).squeeze(-1), value_network(b_next_obs).squeeze(-1)
            advantages = gae(rewards, values, next_values, b_terminations, b_dones, args.gamma, args.gae_lambda)
            returns, advantages = (advantages + values)[mask], advantages[mask]

        # PPO Eq. 9: clipped surrogate + entropy bonus, and the value function, on minibatches for update_epochs epochs
        for _ in range(args.update_epochs):
            for index in torch.randperm(len(returns), device=device).chunk(args.num_minibatches):
                distribution = policy.distribution(obs_batch[index])
                log_ratio = distribution.log_prob(actions_batch[index]) - old_log_probs[index]
                mb_advantages = advantages[index]
                if args.norm_adv and len(index) > 1:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                pg_loss = ppo_loss(log_ratio, mb_advantages, distribution.entropy(), args.clip_coef, args.ent_coef)
                v_loss = F.mse_loss(value_network(obs_batch[index]).squeeze(-1), returns[index])  # on the TD(lambda) return
                optimizer.zero_grad(set_to_none=True)
                (pg_loss + args.vf_coef * v_loss).backward()
                # each network clipped on its own: the value loss (returns up to log(K + 1) / (1 - gamma)) would dominate
                nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
                nn.utils.clip_grad_norm_(value_network.parameters(), args.max_grad_norm)
                optimizer.step()
        if not torch.isfinite(pg_loss + v_loss + learned.mean()):
            sys.exit(f"error: non-finite PPO loss or learned reward at iteration {iteration}; lower --learning-rate.")

        num_steps = int(mask.sum())
        global_step += num_steps
        progress.update(num_steps)
        if args.track:
            stats = {"policy_loss": pg_loss, "value_loss": v_loss, "learned_reward": learned.mean()}
            stats = {f"losses/{key}": value.item() for key, value in stats.items()}
            wandb.log({**stats, "charts/SPS": global_step / (time.time() - start_time)}, step=global_step)
        crossed_eval_step = global_step // args.eval_frequency > (global_step - num_steps) // args.eval_frequency
        if crossed_eval_step or iteration == num_iterations:
            run_evaluation(global_step)
    progress.total = global_step  # autoreset steps fell short of the budget: the bar ends at 100%
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = global_step / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, device, precision)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    envs.close()
    eval_env.close()
    if args.track:
        wandb.finish()
