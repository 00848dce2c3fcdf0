"""Inverse soft-Q Learning: imitation by learning one soft Q-function, which implies both the reward and the policy.

IQ-Learn (Garg, Chakraborty, Cundy, Song, Ermon, NeurIPS 2021, arXiv 2106.12142) turns max-entropy inverse RL's min-max
over rewards and policies (Eq. 3) into a concave maximisation over Q alone (Prop. 3.5): each Q implies its reward by the
inverse soft Bellman operator (Lemma 3.1, Eq. 11: `implied_reward`) and its policy pi_Q = softmax(Q / alpha) (Prop. 3.4:
`soft_q_policy`, `soft_value`). `iq_loss` is -J of Eq. 9 (discrete) / Eq. 10 (continuous) on half expert, half policy
rows, with the chi^2 regularizer (Sec. 5.3) and the value difference in place of the initial-state term (Sec. 5.1).
`q_and_values` gives Q, V(s), V(s'): V* of one Q-network (discrete, Sec. 4.3) or V^pi with target critics for V(s')
(continuous, Sec. 4.4, on the SAC block of sac.py); `iq_update` is one step of Alg. 1. `--absorbing-state` leads a
termination to DAC's absorbing state s_a (Kostrikov et al. 2019, arXiv 1809.02925; `transition_rows`,
`absorbing_state_values`), whose value is learned: with the paper's V(s') = 0 there, ending an episode beats the policy's
negative implied rewards (the bias LS-IQ, arXiv 2303.00599, names). `--resume` continues a checkpointed run.
"""

import json
import os
import random
import shlex
import shutil
import signal
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
    env_id: str = "Hopper-v4"
    """the id of the environment"""
    total_timesteps: int = 500_000
    """total environment steps of the experiment"""
    eval_frequency: int = 10_000
    """evaluate the deterministic (greedy) policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_frequency: int = 1000
    """the training statistics (losses, SPS) go to wandb every this many steps"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 1
    """expert trajectories in the demonstration buffer (1: the regime of the paper's MuJoCo Table 3)"""
    subsample_frequency: int = 1
    """keep every this many-th demo transition (1: all)"""
    any_env: bool = False
    """use an expert folder recorded on another env id (e.g. Hopper-v4 demos for Hopper-v5) when its shapes fit"""

    # IQ-Learn (Alg. 1, Sec. 5)
    chi2_alpha: float = 0.5
    """alpha of the chi^2 penalty psi(r) = E[r^2] / (4 alpha) on the implied rewards (Sec. 5.3; smaller: stronger)"""
    chi2_samples: Literal["auto", "expert", "mixture"] = "auto"
    """the chi^2 penalty's rows: the expert's (Eq. 6) or all, to bound Q where only the policy goes (auto: all for Box)"""
    demo_fraction: float = 0.5
    """share of each minibatch drawn from the demonstrations (Sec. 5.1: half expert, half policy samples)"""
    absorbing_state: Literal["auto", "on", "off"] = "auto"
    """learn the value of DAC's absorbing state after a termination, or keep V(s') = 0 (auto: on with a mixture penalty)"""
    soft_q_temperature: float = 2.0
    """discrete actions: the fixed temperature alpha of V* and pi_Q (1 in Eq. 9; the paper tunes it per task, Sec. 5)"""
    learning_rate: float = 3e-4
    """discrete actions: the learning rate of the Q-network"""

    # the RL backbone (SAC: cleanrl/sac_continuous_action.py defaults; soft Q-learning shares buffer, gamma, batch)
    buffer_size: int = 1_000_000
    """the agent's replay memory size (the demonstrations have their own buffer)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """SAC: target smoothing coefficient (Polyak averaging)"""
    batch_size: int = 256
    """minibatch size, demonstrations and agent samples together"""
    learning_starts: int = 5_000
    """environment steps with uniformly random actions before learning starts"""
    policy_lr: float = 3e-4
    """SAC: the learning rate of the policy network optimizer"""
    q_lr: float = 3e-4
    """SAC: the learning rate of the Q network optimizer (CleanRL's SAC: 1e-3)"""
    policy_frequency: int = 2
    """SAC: the actor is updated every this many steps, this many times (delayed updates as in TD3)"""
    target_network_frequency: int = 1
    """SAC: the frequency of updates for the target networks"""
    alpha: float = 0.05
    """SAC: entropy regularization coefficient (fixed; the initial value with --autotune)"""
    autotune: bool = False
    """SAC: tune alpha to the entropy target -|A| (1812.05905 Eq. 18); off, as the paper fixes it per task (Sec. 5)"""
    hidden_size: int = 256
    """width of the two hidden layers of actor and critics (or of the Q-network)"""
    log_std_min: float = -5.0
    """SAC: lower bound of the actor's log standard deviation"""
    log_std_max: float = 2.0
    """SAC: upper bound of the actor's log standard deviation"""
    bf16: bool = True
    """autocast SAC's hidden matmuls to bfloat16 where the hardware has it (CUDA, CPUs with AMX or AVX512-BF16)"""

    # checkpoints
    checkpoint_minutes: float = 30.0
    """save a checkpoint every this many minutes (0: only when stopped), and when stopped by SIGINT/SIGTERM"""
    checkpoint_dir: str = "checkpoints"
    """folder of the checkpoint file <env-id>__<exp-name>__<seed>.pt (deleted when the run finishes)"""
    resume: bool = False
    """continue the interrupted run from its checkpoint"""
    refill_steps: int = 50_000
    """on --resume, steps of the current policy that refill the agent's replay buffer (not in global_step)"""


# ------------------------------------------------------------------------------------------------------- IQ-Learn
def soft_value(q_values, temperature):
    """Eq. 9: V*(s) = alpha log sum_a exp(Q(s, a) / alpha), over the last (action) axis."""
    return temperature * torch.logsumexp(q_values / temperature, -1)


def soft_q_policy(q_values, temperature):
    """Eq. 1, Prop. 3.4: pi_Q(a|s) = exp((Q(s, a) - V*(s)) / alpha), the policy that minimises J for this Q."""
    return torch.distributions.Categorical(logits=q_values / temperature)


def implied_reward(q_values, next_value, gamma, terminations):
    """Eq. 11: r(s, a, s') = Q(s, a) - gamma V(s'), V(s') = 0 after a true termination; its mean over s' is (T^pi Q)(s, a)."""
    return q_values - gamma * (1 - terminations) * next_value


def transition_rows(obs, actions, next_obs, terminations, absorbing_state, num_absorbing=None):
    """Rows for the buffers, observations + an indicator, 1 only at s_a = (0, ..., 0, 1). With absorbing_state, a termination's
    s' is s_a, and num_absorbing (default: one per termination) self-transitions (s_a, 0, s_a) follow."""
    terminations = np.asarray(terminations, dtype=np.float32)
    real = lambda x: np.concatenate([x, np.zeros((len(x), 1), dtype=np.float32)], 1)
    if not absorbing_state:
        return real(obs), actions, real(next_obs), terminations
    absorbing = np.eye(obs.shape[1] + 1, dtype=np.float32)[-1:]
    rows = real(obs), actions, np.where(terminations[:, None] > 0, absorbing, real(next_obs)), terminations
    self_transition = absorbing, np.zeros((1, actions.shape[1]), np.float32), absorbing, np.zeros(1, np.float32)
    num_absorbing = int(terminations.sum()) if num_absorbing is None else num_absorbing
    return [np.concatenate([part, np.repeat(row, num_absorbing, 0)]) for part, row in zip(rows, self_transition)]


def absorbing_state_values(q_values, value, next_value, terminations, absorbing, absorbing_q):
    """With s_a's learned value (one action, no entropy: Q(s_a, .) = V(s_a) = absorbing_q): Q and V(s) of its self-transitions,
    and V(s') of every row reaching s_a (held fixed: as V(s') the value difference would push it up); no row terminates."""
    absorbing, next_is_absorbing = absorbing.bool(), (terminations + absorbing).bool()
    q_values, value = (torch.where(absorbing, absorbing_q, x) for x in (q_values, value))
    next_value = torch.where(next_is_absorbing, absorbing_q.detach(), next_value)
    return q_values, value, next_value, torch.zeros_like(terminations)


def iq_loss(q_values, value, next_value, terminations, gamma, num_demo, chi2_alpha, chi2_on_policy):
    """-J = -E_expert[r] + psi(r) + E_all[V(s) - gamma V(s')] (Eq. 9-10), the expert's num_demo rows first, psi over their
    rows or all (chi2_on_policy), phi(r) = r - r^2 / (4 alpha); leading axes (twin critics) summed. Returns (-J, rewards)."""
    rewards = implied_reward(q_values, next_value, gamma, terminations)
    expert_term = rewards[..., :num_demo].mean(-1)
    # Sec. 5.3: psi(r) = E[r^2] / (4 alpha), chi^2's regularizer (Table 2); -E_expert[r] + psi = -E_expert[phi(r)]
    penalty = (rewards if chi2_on_policy else rewards[..., :num_demo]).square().mean(-1) / (4 * chi2_alpha)
    # Sec. 5.1, Corollary 2.1: V(s) - gamma V(s') has the mean (1 - gamma) E_p0[V(s0)] over any policy's occupancy
    initial_state_term = (value - gamma * (1 - terminations) * next_value).mean(-1)
    return (initial_state_term - expert_term + penalty).sum(), rewards


def q_and_values(obs, actions, next_obs, nets, args, alpha=None):
    """Q(s, a), V(s), V(s'). Discrete (no "actor"): V* of the one Q-network, the gradient through V*(s') too (no target).
    Continuous: V^pi(s) = Q_k(s, a~pi) - alpha log pi per critic; V^pi(s') = min_k Q'_k(s', a') - alpha log pi, held fixed."""
    qf, actor = nets["qf"], nets.get("actor")
    if actor is None:
        q_all = qf(torch.cat([obs, next_obs]))  # [2 batch, actions]: Q(s, .) and Q(s', .) in one pass
        values = soft_value(q_all, args.soft_q_temperature)
        return q_all[: len(obs)].gather(1, actions.long()).squeeze(1), values[: len(obs)], values[len(obs) :]
    with torch.no_grad():
        next_actions, next_log_pi = actor.get_action(next_obs)
        next_value = nets["qf_target"](next_obs, next_actions).min(0).values - alpha * next_log_pi
        policy_actions, log_pi = actor.get_action(obs)
    # [num_q, batch] each; the gradient reaches Q through V^pi(s) too
    return qf(obs, actions), qf(obs, policy_actions) - alpha * log_pi, next_value


def iq_update(batch, num_demo, nets, optimizers, args, global_step, bf16=False):
    """Alg. 1 on a batch (obs, actions, next_obs, terminations, absorbing), the expert's num_demo rows first: the critic by
    -J (line 3); with an "actor" in nets (and "qf_target", "log_alpha"), SAC's actor and alpha (line 4) on every state but
    s_a and the target critics, at sac.py's rates. With "absorbing_reward" r_a in nets, V(s_a) = r_a / (1 - gamma)."""
    obs, actions, next_obs, terminations, absorbing = batch
    qf, actor = nets["qf"], nets.get("actor")
    absorbing_q = nets["absorbing_reward"] / (1 - args.gamma) if "absorbing_reward" in nets else None
    alpha = None if actor is None else nets["log_alpha"].exp().detach()
    with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=bf16):
        terms = (*q_and_values(obs, actions, next_obs, nets, args, alpha), terminations)  # Q, V(s), V(s'), d
    if absorbing_q is not None:  # s_a's value in place of the networks' and of V(s') = 0 after a termination
        terms = absorbing_state_values(*terms, absorbing, absorbing_q)
    loss, rewards = iq_loss(*terms, args.gamma, num_demo, args.chi2_alpha, args.chi2_samples == "mixture")
    optimizers["q"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["q"].step()
    r = rewards.detach().reshape(-1, len(obs))[0]  # the first critic's implied rewards
    stats = {"losses/iq_loss": loss.detach(), "rewards/expert": r[:num_demo].mean(), "rewards/agent": r[num_demo:].mean()}
    stats |= {"losses/absorbing_value": absorbing_q.detach()} if absorbing_q is not None else {}

    if actor is not None and global_step % args.policy_frequency == 0:
        qf.requires_grad_(False)  # the actor's gradient flows through Q's input only (as Spinning Up freezes Q here)
        for _ in range(args.policy_frequency):
            with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=bf16):
                actor_loss, log_pi = policy_loss(actor, qf, obs[absorbing == 0], alpha)
            optimizers["actor"].zero_grad(set_to_none=True)
            actor_loss.backward()
            optimizers["actor"].step()
            if args.autotune:
                loss = alpha_loss(nets["log_alpha"], log_pi, -float(actions.shape[-1]))  # target entropy -|A|
                optimizers["alpha"].zero_grad(set_to_none=True)
                loss.backward()
                optimizers["alpha"].step()
                alpha = nets["log_alpha"].exp().detach()
        qf.requires_grad_(True)
        stats |= {"losses/actor_loss": actor_loss.detach(), "losses/alpha": alpha, "charts/entropy": -log_pi.detach().mean()}

    if actor is not None and global_step % args.target_network_frequency == 0:
        with torch.no_grad():
            torch._foreach_lerp_(list(nets["qf_target"].parameters()), list(qf.parameters()), args.tau)
    return stats


# ------------------------------------------------------------------------------------------------------------ SAC
class SoftQEnsemble(nn.Module):
    """num_q independent critics Q_k(s, a), evaluated together: each layer is one batched matmul over the critics."""

    def __init__(self, obs_dim, action_dim, hidden_size, num_q=2):
        super().__init__()
        sizes = [obs_dim + action_dim, hidden_size, hidden_size, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / np.sqrt(fan_in)  # nn.Linear's default initialisation, per critic
            self.weights.append(nn.Parameter(torch.empty(num_q, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_q, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, obs, action):
        x = torch.cat([obs, action], -1).expand(len(self.weights[0]), -1, -1)
        for weight, bias in zip(self.weights[:-1], self.biases[:-1]):
            x = F.relu(torch.baddbmm(bias, x, weight))  # bfloat16 under --bf16's autocast
        # the output layer stays float32: Q-values of a few hundred would round to steps of ~1 in bfloat16
        with torch.autocast(x.device.type, enabled=False):
            return torch.baddbmm(self.biases[-1], x.float(), self.weights[-1]).squeeze(-1)  # [num_q, batch]


class Actor(nn.Module):
    def __init__(self, env, hidden_size, log_std_min, log_std_max):
        super().__init__()
        obs_dim, action_dim = np.prod(env.observation_space.shape), np.prod(env.action_space.shape)
        self.fc1 = nn.Linear(obs_dim, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.fc_head = nn.Linear(hidden_size, 2 * action_dim)  # mean and log-std in one matmul
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        high, low = env.action_space.high, env.action_space.low
        self.register_buffer("action_scale", torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((high + low) / 2.0, dtype=torch.float32))
        # the constant part of log pi(a|s): Gaussian normaliser and the affine rescaling's log-determinant
        self.register_buffer("log_prob_offset", 0.5 * np.log(2 * np.pi) * action_dim + torch.log(self.action_scale).sum())

    def forward(self, obs):
        hidden = F.relu(self.fc2(F.relu(self.fc1(obs))))
        # the head stays float32 under --bf16: the mean and log-std feed the log-probabilities
        with torch.autocast(obs.device.type, enabled=False):
            mean, log_std = self.fc_head(hidden.float()).chunk(2, -1)
        # squash log_std into [min, max] smoothly instead of clipping (keeps its gradient alive)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def get_action(self, obs):
        """a = tanh(u) * scale + bias with u = mean + std * eps, eps ~ N(0, I) (reparameterised); log pi(a|s) by Eq. 21."""
        mean, log_std = self(obs)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        # log N(u; mean, std) - log(1 - tanh(u)^2), the latter as 2 (log 2 - u - softplus(-2u)): exact where tanh saturates
        log_prob = -0.5 * eps.square() - log_std - 2 * (np.log(2) - u - F.softplus(-2 * u))
        return torch.tanh(u) * self.action_scale + self.action_bias, log_prob.sum(-1) - self.log_prob_offset

    def deterministic_action(self, obs):
        return torch.tanh(self(obs)[0]) * self.action_scale + self.action_bias


class ReplayBuffer:
    """Transitions as rows [obs, action, reward, next_obs, termination] of one preallocated tensor on the training
    device: a minibatch is one index gather. Checkpoints leave it out (hundreds of MB); --resume refills it."""

    def __init__(self, obs_dim, action_dim, size, device):
        self.widths = (obs_dim, action_dim, 1, obs_dim, 1)
        self.rows = torch.zeros(size, sum(self.widths), device=device)
        self.size, self.pos, self.full = size, 0, False

    def add(self, obs, action, reward, next_obs, termination):
        row = np.concatenate([np.ravel(obs), np.ravel(action), [reward], np.ravel(next_obs), [termination]])
        self.rows[self.pos] = torch.from_numpy(row.astype(np.float32))
        self.pos = (self.pos + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, batch_size):
        index = torch.randint(0, self.size if self.full else self.pos, (batch_size,), device=self.rows.device)
        obs, actions, rewards, next_obs, terminations = self.rows[index].split(self.widths, -1)
        return obs, actions, rewards.squeeze(-1), next_obs, terminations.squeeze(-1)


def policy_loss(actor, qf, obs, alpha):
    """Eq. 7: E_s E_{a~pi}[alpha log pi(a|s) - min_k Q_k(s, a)] through the reparameterised a."""
    actions, log_pi = actor.get_action(obs)
    return (alpha * log_pi - qf(obs, actions).min(0).values).mean(), log_pi


def alpha_loss(log_alpha, log_pi, target_entropy):
    """Eq. 18: -alpha (log pi(a|s) + H_target), so alpha grows when the entropy drops below the target."""
    return (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()


def bf16_is_fast(device):
    """Whether the hardware computes bfloat16 matmuls natively: CUDA with bf16, or a CPU with AMX / AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to ask, so stay in float32
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def make_optimizer(params, lr, device):
    """Adam, fused into one kernel over all parameters where torch has it (CUDA, and CPU since torch 2.4)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=device.type == "cuda")


# ---------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, state, **progress):
    """state: name -> module, optimizer or tensor, listed once in main; progress: the run's counters. Saved with the RNG
    states to a temporary file, then renamed: a kill while saving never leaves half a checkpoint. No replay buffer."""
    state = {name: item.detach().cpu() if torch.is_tensor(item) else item.state_dict() for name, item in state.items()}
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    rng = [random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda_rng]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": state, "rng": rng, "progress": progress}, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def load_checkpoint(path, state):
    """The inverse of save_checkpoint: every item of state takes back its saved values in place; returns the progress."""
    checkpoint = torch.load(path, weights_only=False)
    try:
        for name, item in state.items():
            if torch.is_tensor(item):
                item.data.copy_(checkpoint["state"][name])
            else:
                item.load_state_dict(checkpoint["state"][name])
    except (KeyError, RuntimeError, ValueError) as error:  # other networks or optimisers than the checkpoint's
        error = " ".join(str(error).split())[:200]
        sys.exit(f"error: {path} does not fit these arguments ({error}); resume with those of the interrupted run.")
    python_rng, numpy_rng, torch_rng, cuda_rng = checkpoint["rng"]
    random.setstate(python_rng)
    np.random.set_state(numpy_rng)
    torch.set_rng_state(torch_rng)
    torch.cuda.set_rng_state_all(cuda_rng)
    return checkpoint["progress"]


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
    positive = ("total_timesteps", "eval_frequency", "eval_episodes", "log_frequency", "subsample_frequency", "batch_size")
    positive += ("buffer_size", "policy_frequency", "target_network_frequency", "hidden_size", "chi2_alpha", "q_lr")
    for name in (*positive, "soft_q_temperature", "learning_rate", "policy_lr"):
        if not getattr(args, name) > 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    num_demo = round(args.batch_size * args.demo_fraction)  # rows of each minibatch from the demonstrations
    if not 0 < num_demo < args.batch_size:
        sys.exit(f"error: --demo-fraction {args.demo_fraction} of --batch-size {args.batch_size} leaves no room for one half.")
    if args.total_timesteps <= args.learning_starts:
        sys.exit(f"error: --total-timesteps {args.total_timesteps} must exceed --learning-starts {args.learning_starts}.")
    checkpoint_path = Path(args.checkpoint_dir) / f"{args.env_id}__{args.exp_name}__{args.seed}.pt"
    if args.resume and not checkpoint_path.exists():
        sys.exit(f"error: --resume found no checkpoint at {checkpoint_path}; start the run without --resume.")
    if not args.resume and checkpoint_path.exists():
        fix = "continue it with --resume, or delete it to start over"
        sys.exit(f"error: {checkpoint_path} holds an interrupted run's checkpoint; {fix}.")

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    env = make_env(args.env_id, args.seed)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if not discrete and not isinstance(env.action_space, gym.spaces.Box):
        sys.exit(f"error: iq_learn.py needs Discrete or Box actions but {args.env_id} has {env.action_space}.")
    bf16 = args.bf16 and not discrete and bf16_is_fast(device)
    precision = "bf16-autocast" if bf16 else "fp32"
    # "auto" resolved, as summary.json records it: for Box actions the penalty on every row, and with it s_a's value
    args.chi2_samples = args.chi2_samples.replace("auto", "expert" if discrete else "mixture")
    args.absorbing_state = args.absorbing_state.replace("auto", "on" if args.chi2_samples == "mixture" else "off")
    if args.absorbing_state == "on" and args.chi2_samples != "mixture":
        sys.exit("error: --absorbing-state on needs --chi2-samples mixture: nothing else bounds the absorbing state's value.")
    absorbing_state = args.absorbing_state == "on"
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
    keys = ("observations", "actions", "next_observations", "terminations")
    expert_info, demos = load_expert(
        expert_dir, env, args.num_expert_trajectories, args.subsample_frequency, args.seed, keys, args.any_env
    )
    # the expert's terminations, all of them: each keeps its self-transition of s_a whatever subsampling kept (as DAC)
    _, all_demos = load_expert(expert_dir, env, args.num_expert_trajectories, 1, args.seed, ("terminations",), args.any_env)
    obs_dim, action_dim = int(np.prod(env.observation_space.shape)), 1 if discrete else int(np.prod(env.action_space.shape))
    # rho_E, the demonstrations, and the policy's replay buffer (Sec. 5.1), observations + 1 feature: s_a's indicator
    demo_rows = [demos[key].astype(np.float32).reshape(len(demos[key]), -1) for key in keys[:3]]
    demo_rows = transition_rows(*demo_rows, demos["terminations"], absorbing_state, int(all_demos["terminations"].sum()))
    demo_rb = ReplayBuffer(obs_dim + 1, action_dim, len(demo_rows[0]), device)
    for row in zip(*demo_rows):
        demo_rb.add(row[0], row[1], 0.0, row[2], row[3])
    rb = ReplayBuffer(obs_dim + 1, action_dim, args.buffer_size, device)
    # s_a's reward r_a, trained with the critic: V(s_a) = r_a / (1 - gamma)
    absorbing = {"absorbing_reward": torch.zeros((), device=device, requires_grad=True)} if absorbing_state else {}
    if discrete:  # soft Q-learning with V*: one Q-network Q(s, .), no target
        hidden = nn.Linear(obs_dim, args.hidden_size), nn.ReLU(), nn.Linear(args.hidden_size, args.hidden_size), nn.ReLU()
        qf = nn.Sequential(*hidden, nn.Linear(args.hidden_size, env.action_space.n)).to(device)
        nets, optimizers = {"qf": qf}, {}
    else:
        actor = Actor(env, args.hidden_size, args.log_std_min, args.log_std_max).to(device)
        qf, qf_target = (SoftQEnsemble(obs_dim, action_dim, args.hidden_size).to(device) for _ in range(2))
        qf_target.load_state_dict(qf.state_dict())
        log_alpha = torch.tensor(np.log(args.alpha), dtype=torch.float32, device=device, requires_grad=True)
        nets = {"qf": qf, "qf_target": qf_target, "actor": actor, "log_alpha": log_alpha}
        optimizers = {"actor": make_optimizer(actor.parameters(), args.policy_lr, device)}
        optimizers["alpha"] = make_optimizer([log_alpha], args.q_lr, device)
    q_lr = args.learning_rate if discrete else args.q_lr
    optimizers["q"] = make_optimizer([*qf.parameters(), *absorbing.values()], q_lr, device)
    nets |= absorbing
    state = nets | {f"{name}_optimizer": optimizer for name, optimizer in optimizers.items()}  # what a checkpoint holds
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    progress = {"global_step": 0, "run_name": run_name, "eval_rows": [], "wall_time": 0.0, "refill_env_steps": 0}
    if args.resume:
        progress = load_checkpoint(checkpoint_path, state)
    run_name, start_step, wall_offset, eval_rows = (progress[k] for k in ("run_name", "global_step", "wall_time", "eval_rows"))
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    run_dir = Path("runs") / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval.csv").unlink(missing_ok=True)  # a killed run may have evaluated past its checkpoint's rows
    for row in eval_rows:
        write_eval_row(run_dir, row)
    if args.track:
        import wandb

        run = {"project": args.wandb_project_name, "entity": args.wandb_entity, "name": run_name, "id": run_name}
        wandb.init(**run, config=vars(args), save_code=True, resume="allow")  # a resumed run continues its wandb run

    @torch.no_grad()
    def act(obs, explore):  # a batch of observations -> of actions: sampled from the policy (pi_Q or SAC's), or its mode
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        if discrete:
            return (soft_q_policy(qf(obs), args.soft_q_temperature).sample() if explore else qf(obs).argmax(-1)).cpu().numpy()
        return (actor.get_action(obs)[0] if explore else actor.deterministic_action(obs)).cpu().numpy()

    def collect(obs, global_step):  # one step of the policy into rb, no reward; a time-limit truncation bootstraps
        action = env.action_space.sample() if global_step <= args.learning_starts else act(obs[None], explore=True)[0]
        next_obs, _, terminated, truncated, info = env.step(action)
        action = np.reshape(action, (1, -1)).astype(np.float32)
        for row in zip(*transition_rows(obs.reshape(1, -1), action, next_obs.reshape(1, -1), [terminated], absorbing_state)):
            rb.add(row[0], row[1], 0.0, row[2], row[3])
        return (env.reset()[0] if terminated or truncated else next_obs), info, terminated or truncated

    def run_evaluation(global_step):
        if not all(torch.isfinite(value) for value in stats.values()):
            sys.exit(f"error: non-finite IQ-Learn loss before step {global_step}; lower --q-lr or --chi2-alpha.")
        returns = evaluate(lambda obs: act(obs, explore=False), eval_env, args.eval_episodes, args.seed + 10_000)
        mean, elapsed = float(returns.mean()), time.time() - start_time
        row = {"global_step": global_step, "eval_return_mean": mean, "eval_return_std": float(returns.std())}
        row |= {"normalized_score": normalized_score(mean, expert_info), "wall_time": wall_offset + elapsed}
        row["sps"] = (global_step - start_step) / max(elapsed, 1e-9)
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        if args.track:
            wandb.log({"eval/return": mean, "eval/normalized_score": row["normalized_score"]}, step=global_step)
        progress_bar.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{mean:.1f}")

    # SIGINT (Ctrl-C) and SIGTERM (a session's end, a cluster's preemption) finish the step, checkpoint, and exit
    stop_signals = []
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda signum, frame: stop_signals.append(signum))

    start_time = saved_time = time.time()
    obs, _ = env.reset(seed=args.seed + start_step)
    if args.resume:  # the checkpoint left the agent's replay buffer out: refill it with the current policy
        for _ in tqdm(range(args.refill_steps), desc="refilling the replay buffer", file=sys.stderr, mininterval=2.0):
            obs = collect(obs, start_step)[0]
            progress["refill_env_steps"] += 1
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress_bar = tqdm(total=args.total_timesteps, initial=start_step, file=sys.stderr, desc=run_name, mininterval=2.0)
    stats = {}
    if start_step == 0:
        run_evaluation(0)
    for global_step in range(start_step + 1, args.total_timesteps + 1):
        obs, info, episode_end = collect(obs, global_step)
        if episode_end and args.track:
            episode = {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]}
            wandb.log(episode, step=global_step)
        if global_step > args.learning_starts:
            # Sec. 5.1: half expert, half policy samples (--demo-fraction), the expert's rows first; s_a's indicator split off
            demo_batch, agent_batch = demo_rb.sample(num_demo), rb.sample(args.batch_size - num_demo)
            obs_rows, actions, _, next_obs_rows, terminations = (torch.cat(pair) for pair in zip(demo_batch, agent_batch))
            batch = (obs_rows[:, :-1], actions, next_obs_rows[:, :-1], terminations, obs_rows[:, -1])
            stats = iq_update(batch, num_demo, nets, optimizers, args, global_step, bf16)
            if args.track and global_step % args.log_frequency == 0:
                sps = (global_step - start_step) / (time.time() - start_time)
                wandb.log({**{key: float(value) for key, value in stats.items()}, "charts/SPS": sps}, step=global_step)
        progress_bar.update(1)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            run_evaluation(global_step)
        if stop_signals or (args.checkpoint_minutes and time.time() - saved_time > 60 * args.checkpoint_minutes):
            progress.update(global_step=global_step, wall_time=wall_offset + time.time() - start_time)
            save_checkpoint(checkpoint_path, state, **progress)
            saved_time = time.time()
        if stop_signals:
            progress_bar.close()
            print(f"stopped at step {global_step}: continue from {checkpoint_path} with --resume.", file=sys.stderr)
            sys.exit(128 + stop_signals[0])
    progress_bar.close()

    wall_time, refill_env_steps = wall_offset + time.time() - start_time, progress["refill_env_steps"]
    mean_sps = (args.total_timesteps - start_step) / max(time.time() - start_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, device, precision, refill_env_steps=refill_env_steps)
    checkpoint_path.unlink(missing_ok=True)  # finished: nothing left to resume
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
