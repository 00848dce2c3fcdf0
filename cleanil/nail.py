"""NAIL: Non-Adversarial Imitation Learning, SAC on r_t = -log r~(s,a) + log pi~(a|s) in the Discriminator-Actor-Critic loop.

NAIL (Arenz & Neumann 2020, "Non-Adversarial Imitation Learning and its Connections to Adversarial Methods", arXiv
2008.03525) minimises the reverse KL(q || p) between the agent's state-action distribution q and the expert's p by
iterations t = 0, 1, ...: sample from the current policy pi~ = pi_t (its distribution q_t), estimate the density ratio
r~ = q_t / p with a discriminator, then solve the max-entropy RL problem with the reward r_t = -log r~ + log pi~ (the
paper's r^lb with q and p swapped; AIRL's f at its optimum). With an exact r~ and the KL(pi || pi~) term weighted by
alpha, the RL step maximises L_alpha(pi) = -E_q[log q_t(s,a)/p(s,a)] - alpha E_{q(s)} KL(pi(.|s) || pi~(.|s)), and
  L_{1/(1-gamma)}(pi) <= -KL(q || p) <= L_1(pi),  all three equal at pi = pi~ (KL's chain rule over trajectories):
alpha = 1 (the default: r_t) bounds -KL from above, alpha = 1/(1-gamma) (`--alpha 100`) from below, a monotone
improvement in far smaller steps (both for discounted occupancies; the discriminator weighs its samples undiscounted).
In SAC, r_t - alpha log pi = -log r~ - alpha (log pi - log pi~) at alpha = 1: the reward is -log r~ and this KL term takes
the place of SAC's entropy bonus in the critic's target and the actor's loss (same optimum). So log pi~ is only evaluated
at the current policy's own actions, never deep in its tails at replayed ones, and at the actor's pre-tanh sample u,
where the tanh change of variables cancels exactly. `--reward ail` is plain AIL: r = -log r~ with SAC's entropy.

Map to this file (DAC: Kostrikov et al. 2019, arXiv 1809.02925; SAC: Haarnoja et al. 2018, arXiv 1812.05905):
  iteration t (--epoch-steps)  pi~, the actor frozen at the epoch's start (uniform in the warm-up), collects the epoch;
                               at its end `update_discriminator` fits r~, then SAC updates run on r_t
  `discriminator_network`      logit(s,a) -> log r~ = log q_t(s,a)/p(s,a), by `discriminator_loss` (agent 1, expert 0)
  `gradient_penalty`           DAC's WGAN-GP term on the logit (Gulrajani et al. 2017, arXiv 1704.00028, Eq. 3)
  `absorbing_rows`             DAC's absorbing state s_a after a termination (`expert_transitions`: in the demos too)
  `log_ratio_reward`           r = -log r~ by the current discriminator; `reference_log_prob`: log pi~(a|s) at pi's u
  `soft_q_loss`, `policy_loss` SAC Eq. 5-7 with the KL to pi~ in place of the entropy; in s_a a zero action, no entropy
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
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment"""
    eval_frequency: int = 10_000
    """evaluate the deterministic policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 4
    """number of expert demo episodes to imitate (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory (DAC's subsampled regime: 20)"""
    any_env: bool = False
    """use an expert folder recorded on another env id (e.g. Hopper-v4 demos for Hopper-v5) when its shapes fit"""

    # NAIL
    reward: Literal["nail", "ail"] = "nail"
    """`nail`: r = -log r~(s,a) + log pi~(a|s); `ail`: r = -log r~(s,a) with SAC's entropy (no reference term)"""
    epoch_steps: int = 1_000
    """environment steps per NAIL iteration, collected by the reference policy pi~ frozen at the epoch's start (DAC: 1000)"""
    discriminator_updates_per_step: float = 1.0
    """discriminator minibatches per environment step of the epoch, run at the epoch's end (DAC: one)"""
    discriminator_batch_size: int = 100
    """agent and expert transitions per discriminator minibatch, each (DAC: 100)"""
    discriminator_lr: float = 1e-3
    """the learning rate of the discriminator's Adam optimizer (DAC: Adam's default)"""
    discriminator_hidden_size: int = 256
    """width of the discriminator's two tanh hidden layers (DAC: 256)"""
    gradient_penalty: float = 10.0
    """coefficient of the WGAN-GP gradient penalty on the discriminator's logit (DAC: 10; 0: off)"""
    reference_log_prob_min: float = -10.0
    """lower clip of log pi~(a|s) per action dimension: a guard against a policy far from a narrow pi~ within one epoch"""
    updates_per_step: int = 1
    """SAC updates per environment step of the epoch, run at the epoch's end on the whole replay buffer"""

    # SAC (cleanrl/sac_continuous_action.py defaults, entropy weight fixed at NAIL's 1)
    buffer_size: int = 1_000_000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient (Polyak averaging)"""
    batch_size: int = 256
    """the batch size of samples from the replay memory"""
    learning_starts: int = 1_000
    """environment steps of the uniform policy before learning starts (DAC: 1000), at the end of the epoch reaching it"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network optimizer"""
    policy_frequency: int = 2
    """the actor is updated every this many steps, this many times (delayed updates as in TD3)"""
    target_network_frequency: int = 1
    """the frequency of updates for the target networks"""
    alpha: float = 1.0
    """weight of the KL(pi || pi~) term (of SAC's entropy under --reward ail): 1 is r_t, 1/(1-gamma) the lower bound"""
    autotune: bool = False
    """automatic tuning of alpha for a target entropy (SAC Eq. 18; it leaves both bounds of the docstring)"""
    hidden_size: int = 256
    """width of the two hidden layers of actor and critics"""
    log_std_min: float = -5.0
    """lower bound of the actor's log standard deviation"""
    log_std_max: float = 2.0
    """upper bound of the actor's log standard deviation"""
    bf16: bool = True
    """autocast the hidden layers' matmuls to bfloat16 where the hardware has it (CUDA, CPUs with AMX or AVX512-BF16)"""

    # checkpoints
    checkpoint_minutes: float = 30.0
    """save a checkpoint every this many minutes (0: only when stopped), and when stopped by SIGINT/SIGTERM"""
    checkpoint_dir: str = "checkpoints"
    """folder of the checkpoint file <env-id>__<exp-name>__<seed>.pt (deleted when the run finishes)"""
    resume: bool = False
    """continue the interrupted run from its checkpoint"""
    refill_steps: int = 50_000
    """on --resume, steps of the epoch's pi~ that refill the replay buffer (not in global_step: refill_env_steps)"""


# ----------------------------------------------------------------------------------------------------------- NAIL
def discriminator_network(in_dim, hidden_size):
    """logit(s, a) (DAC's: two tanh layers); trained by `discriminator_loss` it estimates log q_t(s,a)/p(s,a) = log r~."""
    layers = [nn.Linear(in_dim, hidden_size), nn.Tanh(), nn.Linear(hidden_size, hidden_size), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(hidden_size, 1), nn.Flatten(0))  # [batch]


def absorbing_rows(obs, action, next_obs, terminated):
    """DAC's replay rows (s, a, s'), states with an absorbing indicator: a termination's s' is s_a = (0, ..., 0, 1), then
    its self-transition (s_a, 0, s_a) follows; a truncation keeps its real s'."""
    absorbing = np.eye(len(obs) + 1, dtype=np.float32)[-1]
    first = (np.append(obs, 0), action, absorbing if terminated else np.append(next_obs, 0))
    return [first, (absorbing, np.zeros_like(action), absorbing)] if terminated else [first]


def expert_transitions(demos, num_terminated, subsample_frequency):
    """The demos' (s, a) with the absorbing indicator, then one (s_a, 0) per terminated episode (never subsampled away),
    and their weights in `discriminator_loss` (DAC): 1/subsample_frequency for s_a, 1 for a pair standing for that many."""
    obs = np.pad(demos["observations"], ((0, num_terminated), (0, 1)))  # + the indicator feature, + the s_a rows
    obs[len(demos["observations"]) :, -1] = 1
    actions = np.pad(demos["actions"].astype(np.float32), ((0, num_terminated), (0, 0)))  # a = 0 in s_a
    return obs, actions, np.where(obs[:, -1] == 1, 1.0 / subsample_frequency, 1.0).astype(np.float32)


def discriminator_inputs(obs, actions, action_scale, action_bias):
    """(s with its absorbing indicator, a rescaled to [-1, 1] and clipped there as the env clips it; 0 in s_a)."""
    live = 1 - obs[:, -1:]
    return torch.cat([obs, ((actions - action_bias) / action_scale).clamp(-1, 1) * live], -1)


def discriminator_loss(agent_logits, expert_logits, expert_weights=None):
    """Logistic regression, agent (label 1) vs expert (label 0): -E_q[log sigma(l)] - E_p[w log(1 - sigma(l))], optimal at
    l = log q_t/p for balanced batches; w = 1 but in the demos' s_a, not the paper's discounted (1-gamma) gamma^t."""
    agent_term = F.binary_cross_entropy_with_logits(agent_logits, torch.ones_like(agent_logits))
    expert_term = F.binary_cross_entropy_with_logits(expert_logits, torch.zeros_like(expert_logits), weight=expert_weights)
    return agent_term + expert_term


def gradient_penalty(discriminator, agent_inputs, expert_inputs):
    """E[(||grad_x logit(x_hat)||_2 - 1)^2] at x_hat = eps x_expert + (1 - eps) x_agent, eps ~ U[0, 1] (WGAN-GP Eq. 3)."""
    eps = torch.rand(len(expert_inputs), 1, device=expert_inputs.device)
    mixed = (eps * expert_inputs + (1 - eps) * agent_inputs).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    return ((grad.norm(2, dim=-1) - 1) ** 2).mean()


def update_discriminator(discriminator, optimizer, rb, epoch_rows, expert_inputs, expert_weights, scale, bias, args):
    """Fit r~ = q_t/p at the end of iteration t: the agent's minibatches from the buffer's `epoch_rows` last rows (q_t)."""
    for _ in range(max(1, round(args.discriminator_updates_per_step * args.epoch_steps))):
        agent_obs, agent_actions, _ = rb.sample(args.discriminator_batch_size, recent=epoch_rows)
        agent_inputs = discriminator_inputs(agent_obs, agent_actions, scale, bias)
        index = torch.randint(0, len(expert_inputs), (args.discriminator_batch_size,), device=expert_inputs.device)
        expert_batch = expert_inputs[index]
        agent_logits, expert_logits = discriminator(agent_inputs), discriminator(expert_batch)
        d_loss = discriminator_loss(agent_logits, expert_logits, expert_weights[index])
        penalty = gradient_penalty(discriminator, agent_inputs, expert_batch) if args.gradient_penalty else torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        (d_loss + args.gradient_penalty * penalty).backward()
        optimizer.step()
    stats = {"losses/discriminator_loss": d_loss, "losses/gradient_penalty": penalty}
    stats |= {"charts/agent_log_ratio": agent_logits.mean(), "charts/expert_log_ratio": expert_logits.mean()}
    stats["charts/discriminator_accuracy"] = 0.5 * ((agent_logits > 0).float().mean() + (expert_logits < 0).float().mean())
    return {key: value.detach() for key, value in stats.items()}


def reference_log_prob(actor, obs, u, log_prob_min):
    """log pi~(a|s) at a = tanh(u) * scale + bias, u the current policy's pre-tanh sample, clipped below at log_prob_min per
    dimension: Eq. 21 at u as in `Actor.get_action`, whose tanh term cancels exactly (atanh(a) would cap |u| near 7.25)."""
    mean, log_std = actor(obs)
    log_prob = -0.5 * ((u - mean) * torch.exp(-log_std)).square() - log_std - 2 * (np.log(2) - u - F.softplus(-2 * u))
    return (log_prob.sum(-1) - actor.log_prob_offset).clamp(min=log_prob_min * u.shape[-1])


def log_ratio_reward(log_ratio):
    """r(s, a) = -log r~(s, a) = log p(s,a)/q_t(s,a) (AIRL's / DAC's log D - log(1 - D)): r_t less its log pi~ term."""
    return -log_ratio


# -------------------------------------- the SAC block (of sac.py; NAIL's KL term and DAC's absorbing state)
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
        """a = tanh(u) * scale + bias with u = mean + std * eps, eps ~ N(0, I) (reparameterised); log pi(a|s) by Eq. 21; u."""
        mean, log_std = self(obs)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        # log N(u; mean, std) - log(1 - tanh(u)^2), the latter as 2 (log 2 - u - softplus(-2u)): exact where tanh saturates
        log_prob = -0.5 * eps.square() - log_std - 2 * (np.log(2) - u - F.softplus(-2 * u))
        return torch.tanh(u) * self.action_scale + self.action_bias, log_prob.sum(-1) - self.log_prob_offset, u

    def deterministic_action(self, obs):
        return torch.tanh(self(obs)[0]) * self.action_scale + self.action_bias


class ReplayBuffer:
    """Transitions as rows [obs, action, next_obs] of one preallocated tensor on the training device, states with DAC's
    absorbing indicator; no rewards: NAIL's are recomputed per minibatch. Checkpoints leave it out; --resume refills it."""

    def __init__(self, obs_dim, action_dim, size, device):
        self.widths = (obs_dim, action_dim, obs_dim)
        self.rows = torch.zeros(size, sum(self.widths), device=device)
        self.size, self.pos, self.full = size, 0, False

    def add(self, obs, action, next_obs):
        row = np.concatenate([np.ravel(obs), np.ravel(action), np.ravel(next_obs)])
        self.rows[self.pos] = torch.from_numpy(row.astype(np.float32))
        self.pos = (self.pos + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, batch_size, recent=None):  # uniform over the buffer, or over its `recent` last rows
        filled = self.size if self.full else self.pos
        index = torch.randint(0, min(recent or filled, filled), (batch_size,), device=self.rows.device)
        return self.rows[index if recent is None else (self.pos - 1 - index) % self.size].split(self.widths, -1)


def soft_q_loss(qf, qf_target, actor, batch, alpha, gamma, log_pi_reference):
    """Eq. 5-6 with the KL to pi~: (Q_k(s,a) - [r + gamma (min_k Q'_k(s', a') - alpha (log pi(a'|s') - log pi~(a'|s')))])^2,
    a' ~ pi(s') given by its pre-tanh u (log pi~ = 0: SAC); DAC's s_a: a' = 0, no KL term, and no (1 - d) anywhere."""
    obs, actions, rewards, next_obs, next_absorbing = batch
    with torch.no_grad():
        next_actions, next_log_pi, next_u = actor.get_action(next_obs[:, :-1])
        live = 1 - next_absorbing
        next_log_ratio = next_log_pi - log_pi_reference(next_obs[:, :-1], next_u)  # log pi - log pi~ at a'
        min_q_next = qf_target(next_obs, next_actions * live[:, None]).min(0).values - alpha * live * next_log_ratio
        q_target = rewards + gamma * min_q_next
    q_values = qf(obs, actions)
    # sum over the critics: each critic gets the full MSE gradient, as with separate losses
    return F.mse_loss(q_values, q_target.expand_as(q_values), reduction="none").mean(1).sum(), q_values


def policy_loss(actor, qf, obs, alpha, log_pi_reference):
    """Eq. 7 with KL(pi || pi~) for the negative entropy: E_s E_{a~pi}[alpha (log pi(a|s) - log pi~(a|s)) - min_k Q_k(s, a)]
    through the reparameterised a (log pi~ = 0: plain SAC), over real states only (in s_a the action is fixed)."""
    actions, log_pi, u = actor.get_action(obs[:, :-1])
    live = 1 - obs[:, -1]
    log_ratio_to_reference = log_pi - log_pi_reference(obs[:, :-1], u)
    loss = ((alpha * log_ratio_to_reference - qf(obs, actions).min(0).values) * live).sum() / live.sum().clamp(min=1)
    return loss, log_pi, log_ratio_to_reference, live


def alpha_loss(log_alpha, log_pi, target_entropy, live):
    """Eq. 18: -alpha (log pi(a|s) + H_target), so alpha grows when the entropy drops below the target."""
    return (-log_alpha.exp() * (log_pi.detach() + target_entropy) * live).sum() / live.sum().clamp(min=1)


def sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, global_step, log_pi_reference, bf16=False):
    """sac.py's SAC step, with log_pi_reference (obs, u -> log pi~(a|s)) in soft_q_loss and policy_loss, and alpha's loss
    over real states. optimizers: {"q", "actor", "alpha"}; the entropy target is -|A|; bf16 autocasts hidden layers."""
    device_type, target_entropy = batch[0].device.type, -float(batch[1].shape[-1])
    alpha = log_alpha.exp().detach()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        qf_loss, q_values = soft_q_loss(qf, qf_target, actor, batch, alpha, args.gamma, log_pi_reference)
    optimizers["q"].zero_grad(set_to_none=True)
    qf_loss.backward()
    optimizers["q"].step()
    stats = {"losses/qf_loss": qf_loss.detach(), "losses/qf1_values": q_values[0].detach().mean()}

    if global_step % args.policy_frequency == 0:
        qf.requires_grad_(False)  # the actor's gradient flows through Q's input only (as Spinning Up freezes Q here)
        for _ in range(args.policy_frequency):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                actor_loss, log_pi, log_ratio_to_reference, live = policy_loss(actor, qf, batch[0], alpha, log_pi_reference)
            optimizers["actor"].zero_grad(set_to_none=True)
            actor_loss.backward()
            optimizers["actor"].step()
            if args.autotune:
                loss = alpha_loss(log_alpha, log_pi, target_entropy, live)
                optimizers["alpha"].zero_grad(set_to_none=True)
                loss.backward()
                optimizers["alpha"].step()
                alpha = log_alpha.exp().detach()
        qf.requires_grad_(True)
        live_mean = lambda x: (x.detach() * live).sum() / live.sum().clamp(min=1)
        stats |= {"losses/actor_loss": actor_loss.detach(), "losses/alpha": alpha, "charts/entropy": -live_mean(log_pi)}
        stats["charts/kl_to_reference"] = live_mean(log_ratio_to_reference)

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
    positive = ("total_timesteps", "eval_frequency", "eval_episodes", "num_expert_trajectories", "subsample_frequency")
    positive += ("batch_size", "buffer_size", "hidden_size", "epoch_steps", "updates_per_step", "alpha")
    for name in (*positive, "discriminator_updates_per_step", "discriminator_batch_size", "discriminator_hidden_size"):
        if not getattr(args, name) > 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if not min(args.gradient_penalty, args.checkpoint_minutes, args.refill_steps) >= 0:
        sys.exit("error: --gradient-penalty, --checkpoint-minutes and --refill-steps must be non-negative.")
    if args.total_timesteps <= args.learning_starts:
        sys.exit(f"error: --total-timesteps {args.total_timesteps} must exceed --learning-starts {args.learning_starts}.")
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
    ckpt_path = Path(args.checkpoint_dir) / f"{args.env_id}__{args.exp_name}__{args.seed}.pt"
    if args.resume and not ckpt_path.exists():
        sys.exit(f"error: --resume found no checkpoint at {ckpt_path}; start the run without --resume.")
    if not args.resume and ckpt_path.exists():
        sys.exit(
            f"error: {ckpt_path} holds an interrupted run's checkpoint; continue it with --resume, or delete it to start over."
        )

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    bf16 = args.bf16 and bf16_is_fast(device)
    precision = "bf16-autocast" if bf16 else "fp32"

    env = make_env(args.env_id, args.seed)
    if not isinstance(env.action_space, gym.spaces.Box):
        sys.exit(f"error: nail.py needs continuous (Box) actions (its RL is SAC), but {args.env_id} has {env.action_space}.")
    obs_dim, action_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    actor = Actor(env, args.hidden_size, args.log_std_min, args.log_std_max).to(device)
    # pi~, frozen per epoch: no gradient reaches its weights, only through the actions it scores
    reference = Actor(env, args.hidden_size, args.log_std_min, args.log_std_max).to(device).requires_grad_(False)
    qf = SoftQEnsemble(obs_dim + 1, action_dim, args.hidden_size).to(device)  # + 1: DAC's absorbing indicator
    qf_target = SoftQEnsemble(obs_dim + 1, action_dim, args.hidden_size).to(device)
    qf_target.load_state_dict(qf.state_dict())
    discriminator = discriminator_network(obs_dim + 1 + action_dim, args.discriminator_hidden_size).to(device)
    log_alpha = torch.tensor(np.log(args.alpha), dtype=torch.float32, device=device, requires_grad=True)
    optimizers = {"q": make_optimizer(qf.parameters(), args.q_lr, device)}
    optimizers["actor"] = make_optimizer(actor.parameters(), args.policy_lr, device)
    optimizers["alpha"] = make_optimizer([log_alpha], args.q_lr, device)
    optimizers["discriminator"] = make_optimizer(discriminator.parameters(), args.discriminator_lr, device)
    rb = ReplayBuffer(obs_dim + 1, action_dim, args.buffer_size, device)
    # what a checkpoint holds, listed once (no replay buffer: --resume refills it)
    state = {"actor": actor, "reference": reference, "qf": qf, "qf_target": qf_target, "log_alpha": log_alpha}
    state |= {"discriminator": discriminator, **{f"{name}_optimizer": item for name, item in optimizers.items()}}
    progress = {"global_step": 0, "run_name": None, "eval_rows": [], "wall_time": 0.0, "refill_env_steps": 0}
    progress |= {"num_epochs": 0, "sac_steps": 0, "epoch_rows": 0}  # iteration t (0: uniform pi~), SAC steps, rows of q_t
    if args.resume:
        progress = load_checkpoint(ckpt_path, state)
    start_step, eval_rows, wall_offset = progress["global_step"], progress["eval_rows"], progress["wall_time"]
    num_epochs, sac_steps, epoch_rows = progress["num_epochs"], progress["sac_steps"], progress["epoch_rows"]
    run_name = progress["run_name"] or f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    n, keys = args.num_expert_trajectories, ("observations", "actions")
    info, demos = load_expert(expert_dir, eval_env, n, args.subsample_frequency, args.seed, keys, args.any_env)
    _, episodes = load_expert(expert_dir, eval_env, n, 1, args.seed, ("terminations",), args.any_env)
    demos = expert_transitions(demos, int(episodes["terminations"].sum()), args.subsample_frequency)
    expert_obs, expert_actions, expert_weights = (torch.as_tensor(x, device=device) for x in demos)
    scale, bias = actor.action_scale, actor.action_bias
    expert_inputs = discriminator_inputs(expert_obs, expert_actions, scale, bias)
    uniform_log_prob = -torch.log(2 * scale).sum()  # log pi~ of the warm-up's uniform policy: -sum log(high - low)
    run_dir = Path("runs") / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval.csv").unlink(missing_ok=True)  # a killed run may have evaluated past its checkpoint
    for row in eval_rows:
        write_eval_row(run_dir, row)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    def log_pi_tilde(obs, u):
        """log pi~(a|s) at the current policy's actions, given by their pre-tanh samples u; 0 for AIL (SAC's entropy)."""
        if args.reward == "ail":
            return torch.zeros((), device=device)
        if num_epochs == 0:
            return uniform_log_prob
        return reference_log_prob(reference, obs, u, args.reference_log_prob_min)

    @torch.no_grad()
    def collect(obs):
        """One step of the epoch's pi~ (uniform in the warm-up) into the buffer; DAC's absorbing state after a termination."""
        obs_tensor = torch.as_tensor(obs[None], dtype=torch.float32, device=device)
        action = env.action_space.sample() if num_epochs == 0 else reference.get_action(obs_tensor)[0][0].cpu().numpy()
        next_obs, _, terminated, truncated, info = env.step(action)  # the env's reward is only logged
        rows = absorbing_rows(obs, action, next_obs, terminated)
        for row in rows:
            rb.add(*row)
        return next_obs, terminated or truncated, info, len(rows)

    def run_evaluation(global_step):
        act = lambda obs: actor.deterministic_action(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        with torch.no_grad():
            returns = evaluate(act, eval_env, args.eval_episodes, args.seed + 10_000)
        mean_return, elapsed = float(returns.mean()), time.time() - start_time
        row = {"global_step": global_step, "eval_return_mean": mean_return, "eval_return_std": float(returns.std())}
        row |= {"normalized_score": normalized_score(mean_return, info), "wall_time": wall_offset + elapsed}
        row["sps"] = (global_step - start_step) / max(elapsed, 1e-9)
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        if args.track:
            wandb.log({"eval/return": returns.mean(), "eval/normalized_score": row["normalized_score"]}, step=global_step)
        progress_bar.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    stop_signals = []  # SIGINT (Ctrl-C) and SIGTERM (a session's end, a preemption): finish the step, checkpoint, exit
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda signum, frame: stop_signals.append(signal.Signals(signum)))

    start_time = saved_time = time.time()
    obs, _ = env.reset(seed=args.seed + start_step)
    if args.resume:  # refill the buffer with the epoch's pi~ (the actor itself: updates only run at an epoch's end)
        for _ in tqdm(range(min(args.refill_steps, args.buffer_size)), desc="refilling the replay buffer", file=sys.stderr):
            obs, done, _, _ = collect(obs)
            obs = env.reset()[0] if done else obs
            progress["refill_env_steps"] += 1
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress_bar = tqdm(total=args.total_timesteps, initial=start_step, file=sys.stderr, desc=run_name, mininterval=2.0)
    if start_step == 0:
        run_evaluation(0)
    for global_step in range(start_step + 1, args.total_timesteps + 1):
        obs, done, step_info, rows = collect(obs)
        epoch_rows += rows
        if done:
            if args.track:
                episode = step_info["episode"]
                wandb.log({"charts/episodic_return": episode["r"], "charts/episodic_length": episode["l"]}, step=global_step)
            obs, _ = env.reset()

        if global_step % args.epoch_steps == 0 and global_step >= args.learning_starts:
            # end of iteration t: r~ = q_t/p from this epoch's transitions (all by pi~) against the demos ...
            stats = update_discriminator(
                discriminator, optimizers["discriminator"], rb, epoch_rows, expert_inputs, expert_weights, scale, bias, args
            )
            # ... then the max-ent RL step on r_t: SAC on the whole buffer, rewards of the frozen D and pi~
            for _ in range(args.epoch_steps * args.updates_per_step):
                sac_steps += 1
                batch_obs, batch_actions, batch_next_obs = rb.sample(args.batch_size)
                with torch.no_grad():
                    rewards = log_ratio_reward(discriminator(discriminator_inputs(batch_obs, batch_actions, scale, bias)))
                batch = (batch_obs, batch_actions, rewards, batch_next_obs, batch_next_obs[:, -1])
                stats |= sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, sac_steps, log_pi_tilde, bf16)
            reference.load_state_dict(actor.state_dict())  # iteration t + 1: pi~ <- pi
            num_epochs += 1
            stats |= {"charts/reward_mean": rewards.mean(), "charts/epoch": torch.tensor(num_epochs)}
            if not all(torch.isfinite(value) for value in stats.values()):
                sys.exit(f"error: non-finite loss at step {global_step}; lower --q-lr, --policy-lr or --discriminator-lr.")
            if args.track:
                sps = (global_step - start_step) / (time.time() - start_time)
                wandb.log({**{key: float(value) for key, value in stats.items()}, "charts/SPS": sps}, step=global_step)
        if global_step % args.epoch_steps == 0:
            epoch_rows = 0
        progress_bar.update(1)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            run_evaluation(global_step)
        if stop_signals or (args.checkpoint_minutes and time.time() - saved_time > 60 * args.checkpoint_minutes):
            progress |= {"global_step": global_step, "run_name": run_name, "wall_time": wall_offset + time.time() - start_time}
            progress |= {"num_epochs": num_epochs, "sac_steps": sac_steps, "epoch_rows": epoch_rows}
            save_checkpoint(ckpt_path, state, **progress)
            saved_time = time.time()
        if stop_signals:
            progress_bar.close()
            print(f"stopped at step {global_step}: continue from {ckpt_path} with --resume.", file=sys.stderr)
            sys.exit(128 + stop_signals[0])
    progress_bar.close()

    wall_time = wall_offset + time.time() - start_time
    sps = (args.total_timesteps - start_step) / max(time.time() - start_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, sps, device, precision, refill_env_steps=progress["refill_env_steps"])
    ckpt_path.unlink(missing_ok=True)  # finished: a --resume of this run has nothing to continue
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {sps:.0f} steps/s, outputs in {run_dir}")
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
