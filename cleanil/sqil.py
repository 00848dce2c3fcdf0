"""Soft Q Imitation Learning: soft Q-learning (or SAC) with reward 1 on the demonstrations and 0 on everything else.

SQIL (Reddy, Dragan, Levine, "SQIL: Imitation Learning via Reinforcement Learning with Sparse Rewards", ICLR 2020,
arXiv 1905.11108) needs no learned reward: the demonstrations go into their own replay buffer with a constant reward
r = 1, the agent's own transitions into another with r = 0, and every gradient step takes a balanced minibatch, half
from each, through the soft Bellman error. The agent is pulled towards the demonstrated actions and, where it drifts
off the demonstrated states (reward 0 for ever), back onto them. The map below names the paper's terms:
  soft_value                 V(s) = alpha log sum_a exp(Q(s, a) / alpha), the soft value of Sec. 2 (alpha = 1 there)
  soft_bellman_error         Eq. 1, delta^2(D, r) = mean over D of (Q(s, a) - (r + gamma V(s')))^2
  sqil_loss                  Alg. 1, line 4: delta^2(D_demo, 1) + lambda_samp delta^2(D_samp, 0)
  balanced_batch             Alg. 1, the minibatch: half demonstrations (r = 1), half the agent's samples (r = 0)
  soft_q_policy              the soft-optimal policy pi(a|s) = exp((Q(s, a) - V(s)) / alpha) that acts (Sec. 2)
  transition_rows,           `--absorbing-state`: a termination leads to DAC's absorbing state s_a (Kostrikov et al.
  absorbing_state_values     2019, arXiv 1809.02925), whose value is learned like any other, reward 1 in the
                             demonstrations' self-transitions of s_a and 0 in the agent's, not fixed at the paper's 0
  sac_update                 continuous actions: the same loss with SAC's soft value min_k Q'_k(s', a') - alpha log
                             pi(a'|s'), a' ~ pi, and SAC's actor and temperature (the paper's continuous-control
                             experiments run SAC in place of soft Q-learning, Sec. 4.3)
Discrete action spaces run soft Q-learning with a fixed temperature (`--soft-q-temperature`, 1 in the paper); Box ones
run the SAC block of sac.py. A transition that ends in a true termination bootstraps nothing (V = 0), or with
`--absorbing-state` the absorbing state's learned value; a time-limit truncation bootstraps.
`--resume` continues from checkpoints/<env-id>__<exp-name>__<seed>/checkpoint.pt (networks, optimisers, temperature,
counters, RNG states, eval rows: a few MB); the agent's replay buffer is not saved, so a resumed run first refills it
with `--refill-steps` steps of the current policy. `--bf16` (on where the hardware has it) runs the SAC networks'
hidden matmuls in bfloat16.
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
    env_id: str = "Hopper-v4"
    """the id of the environment"""
    total_timesteps: int = 500_000
    """total environment steps of the experiment"""
    eval_frequency: int = 10_000
    """evaluate the deterministic (greedy) policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_frequency: int = 1000
    """the training statistics (losses, SPS) go to the log every this many steps"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 1
    """expert trajectories in the demonstration buffer (1: the regime of IQ-Learn's Table 3)"""
    subsample_frequency: int = 1
    """keep every this many-th demo transition (1: all)"""

    # SQIL (Alg. 1)
    lambda_samp: float = 1.0
    """weight of the agent-sample term delta^2(D_samp, 0) against the demonstration term (Alg. 1; 1 in the paper)"""
    demo_fraction: float = 0.5
    """share of each minibatch drawn from the demonstrations (the paper's balanced batches: half)"""
    absorbing_state: Literal["auto", "on", "off"] = "auto"
    """"on": a termination leads to DAC's absorbing state (Kostrikov et al. 2019, arXiv 1809.02925), whose value is
    learned from its self-transitions, reward 1 in the demonstrations and 0 in the agent's samples like every other
    transition, instead of the paper's V(s') = 0 ("off"). Where the expert's episodes end by termination (Acrobot's and
    MountainCar's goal), V = 0 there makes reaching the goal worth less than staying on any state SQIL's reward keeps
    positive, and the imitating agent learns to stop short of the goal; "auto" (recorded as resolved): "on" where the
    loaded demonstrations hold a termination, else "off" (there only the agent's terminations, reward 0, would teach
    s_a, whose value would stay the paper's 0)"""
    soft_q_temperature: float = 1.0
    """discrete actions: the fixed temperature alpha of soft Q-learning, V(s) = alpha log sum exp(Q / alpha) (1 in the
    paper); its entropy bonus, up to alpha log |A| per step, competes with the 0/1 reward: on Acrobot (log 3 = 1.1 > 1)
    the agent at alpha = 1 values lingering over reaching the goal, at 0.1 it does not (README, classic control)"""
    learning_rate: float = 1e-3
    """discrete actions: the learning rate of the Q-network"""

    # the RL backbone (SAC: cleanrl/sac_continuous_action.py defaults; soft Q-learning shares buffer, gamma, tau, batch)
    buffer_size: int = 1_000_000
    """the agent's replay memory size (the demonstrations have their own buffer)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient (Polyak averaging)"""
    batch_size: int = 256
    """minibatch size, demonstrations and agent samples together"""
    learning_starts: int = 5_000
    """environment steps with uniformly random actions before learning starts"""
    policy_lr: float = 3e-4
    """SAC: the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """SAC: the learning rate of the Q network optimizer"""
    policy_frequency: int = 2
    """SAC: the actor is updated every this many steps, this many times (delayed updates as in TD3)"""
    target_network_frequency: int = 1
    """the frequency of updates for the target networks"""
    alpha: float = 0.05
    """SAC: entropy regularization coefficient (fixed; the initial value with --autotune)"""
    autotune: bool = False
    """SAC: tune the entropy coefficient to the target entropy -|A| (1812.05905 Eq. 18). Off: as the policy sharpens onto
    the demonstrations, the tuned alpha grows until the entropy bonus outweighs SQIL's 0/1 rewards and the imitation
    collapses (README, SQIL)"""
    hidden_size: int = 256
    """width of the two hidden layers of actor and critics (or of the Q-network)"""
    log_std_min: float = -5.0
    """SAC: lower bound of the actor's log standard deviation"""
    log_std_max: float = 2.0
    """SAC: upper bound of the actor's log standard deviation"""
    bf16: bool = True
    """autocast the SAC networks' hidden matmuls to bfloat16 where the hardware computes it natively (CUDA with bf16,
    CPUs with AMX or AVX512-BF16; ignored elsewhere); master weights, optimiser states, targets and losses stay float32"""

    # checkpoints
    checkpoint_frequency: int = 50_000
    """save a resumable checkpoint every this many environment steps (0: never)"""
    checkpoint_minutes: float = 30.0
    """also save it every this many minutes of wall time (0: never), and always when stopped by SIGINT/SIGTERM"""
    checkpoint_dir: Optional[str] = None
    """checkpoint folder (default: checkpoints/<env-id>__<exp-name>__<seed>/, git-ignored)"""
    resume: bool = False
    """continue from the checkpoint in checkpoint_dir"""
    refill_steps: int = 50_000
    """on --resume, environment steps of the current policy that refill the agent's replay buffer before updates
    continue; not counted in global_step, recorded as refill_env_steps"""


# ----------------------------------------------------------------------------------------------------------- SQIL
def balanced_batch(demo_batch, agent_batch):
    """Alg. 1's minibatch: the demonstrations with reward 1, the agent's samples with reward 0, demonstrations first.
    Each batch is (obs, actions, next_obs, terminations) as `transition_rows` stores them, observations with the
    absorbing indicator last; returns (obs, actions, rewards, next_obs, terminations, absorbing) with the indicator split
    off the observations the networks see (absorbing = 1 on s_a's self-transitions)."""
    obs, actions, next_obs, terminations = (torch.cat([demo, agent]) for demo, agent in zip(demo_batch, agent_batch))
    rewards = torch.cat(
        [torch.ones(len(demo_batch[0]), device=obs.device), torch.zeros(len(agent_batch[0]), device=obs.device)]
    )
    return obs[:, :-1], actions, rewards, next_obs[:, :-1], terminations, obs[:, -1]


def transition_rows(obs, actions, next_obs, terminations, absorbing_state):
    """Transitions as the buffers store them (numpy rows): observations gain an indicator feature, 1 only at DAC's
    absorbing state s_a = (0, ..., 0, 1). With absorbing_state, a terminated transition's next state is s_a and one
    self-transition (s_a, 0, s_a) follows each termination, stored as an ordinary transition; without, the indicator
    stays 0 and a termination keeps V(s') = 0. A time-limit truncation is not a termination: its s' stays."""
    terminations = np.asarray(terminations, dtype=np.float32)
    real = lambda x: np.concatenate([x, np.zeros((len(x), 1), dtype=np.float32)], 1)
    if not absorbing_state:
        return real(obs), actions, real(next_obs), terminations
    absorbing = np.eye(obs.shape[1] + 1, dtype=np.float32)[-1:]
    num_absorbing = int(terminations.sum())
    return (
        np.concatenate([real(obs), np.repeat(absorbing, num_absorbing, 0)]),
        np.concatenate([actions, np.zeros((num_absorbing, actions.shape[1]), dtype=np.float32)]),
        np.concatenate(
            [np.where(terminations[:, None] > 0, absorbing, real(next_obs)), np.repeat(absorbing, num_absorbing, 0)]
        ),
        np.concatenate([terminations, np.zeros(num_absorbing, dtype=np.float32)]),
    )


def absorbing_state_values(q_values, next_value, terminations, absorbing, absorbing_q):
    """Q, V(s') and terminations with the absorbing state's learned value: s_a has a single action and no entropy, so
    Q(s_a, .) = V(s_a) is one number, absorbing_q. A self-transition row (absorbing = 1) has Q = absorbing_q, and every
    row whose s' is s_a (a termination, or s_a's self-transition) has V(s') = absorbing_q held fixed; no row counts as
    terminated any longer. Its self-transitions give s_a reward 1 from the demonstrations and 0 from the agent, so with
    balanced batches V(s_a) settles at the demonstrations' share of s_a's rows times 1 / (1 - gamma): a goal the expert
    ends at is worth about what imitating it is, and a termination only the agent reaches stays worth 0."""
    absorbing, next_is_absorbing = absorbing.bool(), (terminations + absorbing).bool()
    q_values = torch.where(absorbing, absorbing_q, q_values)
    next_value = torch.where(next_is_absorbing, absorbing_q.detach(), next_value)
    return q_values, next_value, torch.zeros_like(terminations)


def soft_value(q_values, temperature):
    """Sec. 2: V(s) = alpha log sum_a exp(Q(s, a) / alpha), over the last (action) axis."""
    return temperature * torch.logsumexp(q_values / temperature, -1)


def soft_bellman_error(q_values, rewards, gamma, terminations, next_value):
    """Eq. 1, per transition: (Q(s, a) - (r + gamma (1 - d) V(s')))^2; the target is held fixed."""
    return (q_values - (rewards + gamma * (1 - terminations) * next_value).detach()).square()


def sqil_loss(squared_errors, num_demo, lambda_samp):
    """Alg. 1, line 4: delta^2(D_demo, 1) + lambda_samp delta^2(D_samp, 0), each the mean over its half of the batch
    (the demonstrations come first); summed over leading axes such as SAC's twin critics."""
    demo_term = squared_errors[..., :num_demo].mean(-1)
    sample_term = squared_errors[..., num_demo:].mean(-1)
    return (demo_term + lambda_samp * sample_term).sum()


def soft_q_policy(q_values, temperature):
    """Sec. 2: the soft-optimal policy pi(a|s) = exp((Q(s, a) - V(s)) / alpha), a distribution over the actions."""
    return torch.distributions.Categorical(logits=q_values / temperature)


class QNetwork(nn.Module):
    """Discrete actions: Q(s, .) for every action at once."""

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


def soft_q_update(batch, num_demo, q_network, target_network, optimizer, args, absorbing_q=None):
    """One soft Q-learning step on a balanced batch (Alg. 1 with the soft value of Sec. 2), then Polyak targets. With
    absorbing_q (--absorbing-state), the absorbing state's value (`absorbing_state_values`)."""
    obs, actions, rewards, next_obs, terminations, absorbing = batch
    with torch.no_grad():
        next_value = soft_value(target_network(next_obs), args.soft_q_temperature)
    q_values = q_network(obs).gather(1, actions.long()).squeeze(1)
    if absorbing_q is not None:
        q_values, next_value, terminations = absorbing_state_values(q_values, next_value, terminations, absorbing, absorbing_q)
    loss = sqil_loss(soft_bellman_error(q_values, rewards, args.gamma, terminations, next_value), num_demo, args.lambda_samp)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(target_network.parameters()), list(q_network.parameters()), args.tau)
    stats = {
        "losses/qf_loss": loss.detach(),
        "losses/qf1_values": q_values.detach().mean(),
        "losses/q_demo": q_values[:num_demo].detach().mean(),
        "losses/q_agent": q_values[num_demo:].detach().mean(),
    }
    if absorbing_q is not None:
        stats["losses/absorbing_value"] = absorbing_q.detach()
    return stats


# ------------------------------------------------------------------------------------ the SAC block (of sac.py)


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

    def mean_mlp(self):
        """obs -> pre-tanh mean as a plain nn.Sequential (the shipped policy.pt, loadable without this class)."""
        action_dim = self.fc_head.out_features // 2
        fc_mean = nn.Linear(self.fc_head.in_features, action_dim)
        with torch.no_grad():
            fc_mean.weight.copy_(self.fc_head.weight[:action_dim])
            fc_mean.bias.copy_(self.fc_head.bias[:action_dim])
        return nn.Sequential(self.fc1, nn.ReLU(), self.fc2, nn.ReLU(), fc_mean.to(self.fc1.weight.device))


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


def soft_q_loss(qf, qf_target, actor, batch, alpha, gamma, num_demo, lambda_samp, absorbing_q=None):
    """Eq. 1 with SAC's soft value (1812.05905 Eq. 5-6), V(s') = min_k Q'_k(s', a') - alpha log pi(a'|s'), a' ~ pi(s'),
    the squared errors weighted as Alg. 1 does (sqil_loss). With absorbing_q (--absorbing-state), the absorbing state's
    value (`absorbing_state_values`)."""
    obs, actions, rewards, next_obs, terminations, absorbing = batch
    with torch.no_grad():
        next_actions, next_log_pi = actor.get_action(next_obs)
        next_value = qf_target(next_obs, next_actions).min(0).values - alpha * next_log_pi
    q_values = qf(obs, actions)  # [num_q, batch]
    if absorbing_q is not None:
        q_values, next_value, terminations = absorbing_state_values(q_values, next_value, terminations, absorbing, absorbing_q)
    return sqil_loss(soft_bellman_error(q_values, rewards, gamma, terminations, next_value), num_demo, lambda_samp), q_values


def policy_loss(actor, qf, obs, alpha):
    """Eq. 7: E_s E_{a~pi}[alpha log pi(a|s) - min_k Q_k(s, a)] through the reparameterised a."""
    actions, log_pi = actor.get_action(obs)
    return (alpha * log_pi - qf(obs, actions).min(0).values).mean(), log_pi


def alpha_loss(log_alpha, log_pi, target_entropy):
    """Eq. 18: -alpha (log pi(a|s) + H_target), so alpha grows when the entropy drops below the target."""
    return (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()


def sac_update(
    batch,
    num_demo,
    actor,
    qf,
    qf_target,
    log_alpha,
    q_optimizer,
    actor_optimizer,
    alpha_optimizer,
    args,
    target_entropy,
    global_step,
    bf16=False,
    absorbing_q=None,
):
    """One SAC step on a balanced batch: critics every call, actor and alpha policy_frequency times every
    policy_frequency calls, on the states of both halves but the absorbing state (its action is fixed). bf16 autocasts
    the hidden layers' matmuls."""
    device_type = batch[0].device.type
    alpha = log_alpha.exp().detach()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        qf_loss, q_values = soft_q_loss(
            qf, qf_target, actor, batch, alpha, args.gamma, num_demo, args.lambda_samp, absorbing_q
        )
    q_optimizer.zero_grad(set_to_none=True)
    qf_loss.backward()
    q_optimizer.step()
    stats = {
        "losses/qf_loss": qf_loss.detach(),
        "losses/qf1_values": q_values[0].detach().mean(),
        "losses/q_demo": q_values[0, :num_demo].detach().mean(),
        "losses/q_agent": q_values[0, num_demo:].detach().mean(),
    }
    if absorbing_q is not None:
        stats["losses/absorbing_value"] = absorbing_q.detach()

    if global_step % args.policy_frequency == 0:
        qf.requires_grad_(False)  # the actor's gradient flows through Q's input only (as Spinning Up freezes Q here)
        for _ in range(args.policy_frequency):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                actor_loss, log_pi = policy_loss(actor, qf, batch[0][batch[5] == 0], alpha)
            actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            actor_optimizer.step()
            if args.autotune:
                loss = alpha_loss(log_alpha, log_pi, target_entropy)
                alpha_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                alpha_optimizer.step()
                alpha = log_alpha.exp().detach()
        qf.requires_grad_(True)
        stats.update(
            {"losses/actor_loss": actor_loss.detach(), "losses/alpha": alpha, "charts/entropy": -log_pi.detach().mean()}
        )

    if global_step % args.target_network_frequency == 0:
        with torch.no_grad():
            torch._foreach_lerp_(list(qf_target.parameters()), list(qf.parameters()), args.tau)
    return stats


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
        "log_frequency",
        "batch_size",
        "buffer_size",
        "policy_frequency",
        "target_network_frequency",
        "hidden_size",
        "soft_q_temperature",
        "learning_rate",
        "q_lr",
        "policy_lr",
    ):
        if not getattr(args, name) > 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    for name in ("lambda_samp", "learning_starts", "checkpoint_frequency", "checkpoint_minutes", "refill_steps"):
        if not getattr(args, name) >= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be non-negative, got {getattr(args, name)}.")
    num_demo = round(args.batch_size * args.demo_fraction)  # rows of each minibatch from the demonstrations
    if not 0 < num_demo < args.batch_size:
        sys.exit(
            f"error: --demo-fraction {args.demo_fraction} of --batch-size {args.batch_size} leaves no room for both "
            f"demonstrations "
            f"and agent samples; pass a fraction strictly between 0 and 1 (0.5: the paper's balanced batches)."
        )
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
    checkpoint_dir = Path(args.checkpoint_dir or f"checkpoints/{args.env_id}__{args.exp_name}__{args.seed}")
    checkpoint = None
    if args.resume:
        if not (checkpoint_dir / "checkpoint.pt").exists():
            sys.exit(
                f"error: --resume found no checkpoint at {checkpoint_dir / 'checkpoint.pt'}; start the run without --resume."
            )
        checkpoint = torch.load(checkpoint_dir / "checkpoint.pt", weights_only=False)

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    run_name = checkpoint["run_name"] if checkpoint else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    env = make_env(args.env_id, args.seed)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if not discrete and not isinstance(env.action_space, gym.spaces.Box):
        sys.exit(f"error: sqil.py needs Discrete or Box actions but {args.env_id} has {env.action_space}.")
    bf16 = args.bf16 and not discrete and bf16_is_fast(device)
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    expert_info = load_expert_info(expert_dir, env, required=True)
    demos = load_demos(
        expert_dir,
        env,
        args.num_expert_trajectories,
        args.subsample_frequency,
        args.seed,
        ("observations", "actions", "next_observations", "terminations"),
    )
    obs_dim = int(np.prod(env.observation_space.shape))
    action_dim = 1 if discrete else int(np.prod(env.action_space.shape))  # a discrete action is stored as its index
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

    # whether the expert's episodes end by termination, whatever subsampling kept
    full_terminations = load_demos(expert_dir, env, args.num_expert_trajectories, 1, args.seed, ("terminations",))
    if args.absorbing_state == "auto":
        args.absorbing_state = "on" if full_terminations["terminations"].any() else "off"  # summary.json records it
    absorbing_state = args.absorbing_state == "on"
    # D_demo: the demonstrations, on the training device once (obs and next_obs with the absorbing indicator, actions,
    # terminations; reward 1 is implied), with one self-transition of s_a per terminated demo episode
    # (--absorbing-state), kept whatever subsampling dropped, as DAC does
    demo_rows = transition_rows(
        *(
            demos[key].astype(np.float32).reshape(len(demos[key]), -1)
            for key in ("observations", "actions", "next_observations")
        ),
        demos["terminations"],
        absorbing_state,
    )
    if absorbing_state:
        missing = int(full_terminations["terminations"].sum() - demos["terminations"].sum())
        absorbing = np.eye(obs_dim + 1, dtype=np.float32)[-1:]
        extra = (absorbing, np.zeros((1, action_dim), dtype=np.float32), absorbing, np.zeros(1, dtype=np.float32))
        demo_rows = [np.concatenate([rows, np.repeat(row, missing, 0)]) for rows, row in zip(demo_rows, extra)]
    demo_buffer = [torch.as_tensor(rows, device=device) for rows in demo_rows]
    rb = ReplayBuffer(obs_dim + 1, action_dim, args.buffer_size, device)  # D_samp: the agent's transitions, reward 0
    # the absorbing state's reward r_a, trained with the critics (--absorbing-state): V(s_a) = r_a / (1 - gamma). Adam
    # moves a parameter by about its learning rate a step, so V(s_a) itself would need ~1 / ((1 - gamma) lr) updates to
    # reach its scale, where r_a needs ~1 / lr
    absorbing_reward = torch.zeros((), device=device, requires_grad=True) if absorbing_state else None
    absorbing_params = [absorbing_reward] if absorbing_state else []
    if discrete:
        q_network = QNetwork(obs_dim, env.action_space.n, args.hidden_size).to(device)
        target_network = QNetwork(obs_dim, env.action_space.n, args.hidden_size).to(device)
        target_network.load_state_dict(q_network.state_dict())
        q_optimizer = make_optimizer(list(q_network.parameters()) + absorbing_params, args.learning_rate, device)
        # the state a checkpoint holds, listed once (no replay buffer: --resume refills it)
        saved_state = {"q_network": q_network, "target_network": target_network, "q_optimizer": q_optimizer}
    else:
        actor = Actor(env, args.hidden_size, args.log_std_min, args.log_std_max).to(device)
        qf = SoftQEnsemble(obs_dim, action_dim, args.hidden_size).to(device)
        qf_target = SoftQEnsemble(obs_dim, action_dim, args.hidden_size).to(device)
        qf_target.load_state_dict(qf.state_dict())
        q_optimizer = make_optimizer(list(qf.parameters()) + absorbing_params, args.q_lr, device)
        actor_optimizer = make_optimizer(actor.parameters(), args.policy_lr, device)
        target_entropy = -float(action_dim)
        log_alpha = torch.tensor(np.log(args.alpha), dtype=torch.float32, device=device, requires_grad=True)
        alpha_optimizer = make_optimizer([log_alpha], args.q_lr, device)
        saved_state = {
            "actor": actor,
            "qf": qf,
            "qf_target": qf_target,
            "q_optimizer": q_optimizer,
            "actor_optimizer": actor_optimizer,
            "alpha_optimizer": alpha_optimizer,
            "log_alpha": log_alpha,
        }
    if absorbing_state:
        saved_state["absorbing_reward"] = absorbing_reward

    start_step, wall_offset, refill_env_steps, eval_rows, commands = 0, 0.0, 0, [], []
    if checkpoint:
        try:
            load_checkpoint_state(saved_state, checkpoint)
        except (KeyError, RuntimeError, ValueError) as error:
            sys.exit(
                f"error: {checkpoint_dir / 'checkpoint.pt'} does not fit these arguments "
                f"({' '.join(str(error).split())[:240]}); "
                f"resume with the arguments of the run that wrote it, or start without --resume."
            )
        start_step, wall_offset, refill_env_steps, eval_rows, commands = (
            checkpoint[k] for k in ("global_step", "wall_time", "refill_env_steps", "eval_rows", "commands")
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

    def absorbing_value():
        return absorbing_reward / (1 - args.gamma) if absorbing_state else None

    def store_transition(obs, action, next_obs, terminated):
        # r = 0 for every agent transition (SQIL); bootstrap through time-limit truncations, not terminations
        rows = transition_rows(
            obs.reshape(1, -1),
            np.reshape(action, (1, -1)).astype(np.float32),
            next_obs.reshape(1, -1),
            [terminated],
            absorbing_state,
        )
        for row_obs, row_action, row_next_obs, row_termination in zip(*rows):
            rb.add(row_obs, row_action, 0.0, row_next_obs, row_termination)

    @torch.no_grad()
    def act_deterministic(obs):
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        return (q_network(obs).argmax(-1) if discrete else actor.deterministic_action(obs)).cpu().numpy()

    @torch.no_grad()
    def act_exploring(obs, global_step):
        if global_step <= args.learning_starts:
            return env.action_space.sample()
        obs = torch.as_tensor(obs[None], dtype=torch.float32, device=device)
        if discrete:
            return soft_q_policy(q_network(obs), args.soft_q_temperature).sample()[0].item()
        return actor.get_action(obs)[0][0].cpu().numpy()

    def run_evaluation(global_step):
        returns = evaluate(act_deterministic, eval_env, args.eval_episodes, args.seed + 10_000)
        wall_time = wall_offset + time.time() - start_time
        row = {
            "global_step": global_step,
            "eval_return_mean": float(returns.mean()),
            "eval_return_std": float(returns.std()),
            "normalized_score": normalized_score(float(returns.mean()), expert_info),
            "wall_time": wall_time,
            "sps": (global_step - start_step) / max(time.time() - start_time, 1e-9),
        }
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
            refill_env_steps=refill_env_steps,
            commands=commands,
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
    obs, _ = env.reset(seed=args.seed + start_step)
    if checkpoint:
        # the buffer was left out of the checkpoint: refill it with the current policy before updates continue
        for _ in tqdm(
            range(min(args.refill_steps, args.buffer_size)),
            desc="refilling the replay buffer",
            file=sys.stderr,
            mininterval=2.0,
        ):
            action = act_exploring(obs, start_step)
            next_obs, _, terminated, truncated, info = env.step(action)
            store_transition(obs, action, next_obs, terminated)
            obs = next_obs if not (terminated or truncated) else env.reset()[0]
            refill_env_steps += 1
    hardware = hardware_info(device, bf16)
    print(
        f"{run_name}: {hardware['device']} ({hardware['device_name']}), {hardware['threads']} thread(s), "
        f"{hardware['precision']}",
        file=sys.stderr,
    )
    progress = tqdm(total=args.total_timesteps, initial=start_step, file=sys.stderr, desc=run_name, mininterval=2.0)
    if start_step == 0:
        run_evaluation(0)
    last_checkpoint_time = time.time()
    for global_step in range(start_step + 1, args.total_timesteps + 1):
        action = act_exploring(obs, global_step)
        next_obs, _, terminated, truncated, info = env.step(action)  # the env reward is only logged (episode statistics)
        store_transition(obs, action, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            log_metrics(
                args.track,
                {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]},
                global_step,
            )
            obs, _ = env.reset()

        if global_step > args.learning_starts:
            demo_index = torch.randint(0, len(demo_buffer[0]), (num_demo,), device=device)
            agent_obs, agent_actions, _, agent_next_obs, agent_terminations = rb.sample(args.batch_size - num_demo)
            batch = balanced_batch(
                [tensor[demo_index] for tensor in demo_buffer], (agent_obs, agent_actions, agent_next_obs, agent_terminations)
            )
            if discrete:
                stats = soft_q_update(batch, num_demo, q_network, target_network, q_optimizer, args, absorbing_value())
            else:
                stats = sac_update(
                    batch,
                    num_demo,
                    actor,
                    qf,
                    qf_target,
                    log_alpha,
                    q_optimizer,
                    actor_optimizer,
                    alpha_optimizer,
                    args,
                    target_entropy,
                    global_step,
                    bf16,
                    absorbing_value(),
                )
            # checked where logged, not every update: the check waits on the GPU
            if global_step % args.log_frequency == 0:
                exit_if_non_finite(
                    stats.values(),
                    f"error: non-finite SQIL loss at step {global_step} ({ {k: float(v) for k, v in stats.items()} }); "
                    f"lower --q-lr or --learning-rate.",
                )
                sps = (global_step - start_step) / (time.time() - start_time)
                log_metrics(args.track, {**stats, "charts/SPS": sps}, global_step)
        progress.update(1)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            run_evaluation(global_step)
        if (
            (args.checkpoint_frequency and global_step % args.checkpoint_frequency == 0)
            or global_step == args.total_timesteps
            or stop_signals
            or (args.checkpoint_minutes and time.time() - last_checkpoint_time > 60 * args.checkpoint_minutes)
        ):
            save_checkpoint(global_step)
            last_checkpoint_time = time.time()
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
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, {**hardware, "refill_env_steps": refill_env_steps})
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
