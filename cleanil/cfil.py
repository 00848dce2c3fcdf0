"""Coupled Flow Imitation Learning (CFIL): SAC on the reward -x, x a log density ratio modelled by two coupled flows.

Freund, Sarafian, Kraus, "A Coupled Flow Approach to Imitation Learning", ICML 2023, arXiv 2305.00303. CFIL minimises
KL(d_pi || d_e) between the agent's and the expert's state(-action) distributions (the negated return under the reward
log d_e - log d_pi) through its Donsker-Varadhan (DV) representation sup_x E_{d_pi}[x] - log E_{d_e}[e^x], maximised at
x* = log d_pi/d_e + const, with x = log p_psi - log q_phi: two normalizing flows, the agent's and the expert's, coupled.
  MADE, MAF, CoupledFlow        the flows: masked autoregressive flows (Papamakarios et al. 2017, arXiv 1705.07057)
  squash                        sigma(x) = a tanh(x / b) of x = log p_psi - log q_phi (official b=15, a=6)
  dv_loss                       Alg. 1 loss, the negated DV bound: log E_{d_e}[e^x] - E_{d_pi}[x]
  flow_regularizer              Alg. 1 flow regularization (weight alpha): -E_{d_pi}[log p_psi] - E_{d_e}[log q_phi]
  smooth                        Alg. 1 smoothing (akin to dequantization): z + beta z u, u ~ U(-1/2, 1/2) per dimension
  density_loss, update_density  Alg. 1 density step on expert demos and replay transitions (samples of d_pi)
  replay_reward                 Alg. 1 policy step: SAC on r = -x (+a when squashed), by the current flows, per minibatch
`--mode`: the paper's regimes, `--variant`: its ablations. SAC as the official code's (spinningup's: lr 1e-3, alpha 0.2).
"""

import json
import math
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
    total_timesteps: int = 320_000
    """total environment steps of the experiment (the paper's 80 epochs of 4000 steps)"""
    eval_frequency: int = 4_000
    """evaluate the deterministic policy every this many environment steps (the paper's epoch)"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_frequency: int = 1000
    """the training statistics (losses, SPS) go to wandb every this many steps"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 1
    """number of expert demo episodes to imitate (the first ones of demos.npz; the paper uses a single one)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory (the paper's subsampled regime: 10-100)"""
    any_env: bool = False
    """use an expert folder recorded on another env id (e.g. Hopper-v4 demos for Hopper-v5) when its shapes fit"""
    # CFIL
    mode: Literal["sa", "s", "ss"] = "sa"
    """what the flows model: (s, a), s or (s, s') (the state-only modes never read the demos' actions)"""
    variant: Literal["cfil", "nosquash", "regularnet", "indflow", "indflowns", "numerator"] = "cfil"
    """CFIL or an ablation: nosquash (no sigma), regularnet (an MLP x), indflow(ns) (two MLE flows), numerator (r = log q)"""
    density_lr: float = 1e-3
    """learning rate of the Adam optimizer of the flows (or of the regularnet MLP)"""
    density_update_every: int = 1_000
    """Alg. 1: train the flows every this many environment steps"""
    density_updates: int = 10
    """Alg. 1: gradient steps on the flows at each of those updates"""
    density_batch: int = 100
    """Alg. 1: expert and agent transitions per flow gradient step (each)"""
    smooth: float = 0.5
    """smoothing beta: each flow input z becomes z + beta (z + 1e-3) u, u ~ U(-1/2, 1/2), when training the flows (0: off)"""
    flow_reg: float = 1.0
    """weight alpha of the flow regularizer -E_agent log p_psi - E_expert log q_phi (0: off)"""
    squash_scale: float = 15.0
    """b of the squasher sigma(x) = a tanh(x / b)"""
    squash_bound: float = 6.0
    """a of the squasher sigma(x) = a tanh(x / b): |x| <= a"""
    reward_shift: bool = True
    """add a to the squashed reward -x so that it lies in [0, 2a] (the official --tanh_shift)"""
    flow_blocks: int = 1
    """MADE blocks per flow (the variable order is reversed between consecutive blocks)"""
    flow_hidden_size: int = 256
    """width of the hidden layers of each MADE (and of the regularnet MLP)"""
    flow_hidden_layers: int = 3
    """hidden layers of each MADE (and of the regularnet MLP); official: an input layer plus n_hidden=2"""
    flow_batch_norm: bool = False
    """a batch-norm flow layer after each MADE block (batch statistics in training, running ones for the rewards)"""
    flow_features: Literal["auto", "all"] = "auto"
    """observation dims the flows see: `auto` drops those the official code drops (Humanoid: 106 of 376), `all` none"""
    # SAC (official CFIL settings: spinningup SAC)
    buffer_size: int = 1_000_000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient (Polyak averaging; spinningup's polyak 0.995)"""
    batch_size: int = 100
    """the batch size of samples from the replay memory"""
    learning_starts: int = 2_000
    """environment steps with uniformly random actions before learning starts"""
    policy_lr: float = 1e-3
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network optimizer"""
    policy_frequency: int = 1
    """the actor is updated every this many steps, this many times (1: every step, as spinningup)"""
    target_network_frequency: int = 1
    """the frequency of updates for the target networks"""
    alpha: float = 0.2
    """entropy regularization coefficient (initial value when autotuned)"""
    autotune: bool = False
    """automatic tuning of the entropy coefficient (SAC 1812.05905 Eq. 18; off in the official CFIL runs)"""
    hidden_size: int = 256
    """width of the two hidden layers of actor and critics"""
    log_std_min: float = -5.0
    """lower bound of the actor's log standard deviation"""
    log_std_max: float = 2.0
    """upper bound of the actor's log standard deviation"""
    bf16: bool = True
    """autocast hidden-layer matmuls to bfloat16 where the hardware has it natively (CUDA, AMX, AVX512-BF16); losses fp32"""
    # checkpoints (a default run takes hours on a CPU core)
    checkpoint_minutes: float = 30.0
    """save a resumable checkpoint every this many minutes (0: never), and on SIGTERM/SIGINT, then exit 128 + signal"""
    checkpoint_dir: str = "checkpoints"
    """folder of the checkpoint file <env-id>__<exp-name>__<seed>.pt (deleted when the run finishes)"""
    resume: bool = False
    """continue the interrupted run from its checkpoint (networks, flows, optimisers, RNG states; no replay buffer)"""
    refill_steps: int = 50_000
    """on --resume, environment steps of the current policy that refill the replay buffer before updates continue"""


# ----------------------------------------------------------------------------------------------------------- CFIL
class MaskedLinear(nn.Linear):
    """nn.Linear with its weight zero outside a 0/1 mask (MADE): masked once, and so is every gradient (no masked forward)."""

    def __init__(self, in_features, out_features, mask):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float(), persistent=False)  # rebuilt from the degrees, not checkpointed
        self.weight.data.mul_(self.mask)
        self.weight.register_hook(lambda grad: grad * self.mask)


class MADE(nn.Module):
    """One MAF block (Eq. 4-5): u_i = (z_i - m_i(z_<i)) exp(-log_a_i(z_<i)), log|det du/dz| = -sum_i log_a_i, autoregressive in
    `degrees` (z_i's position): hidden units of degree k see inputs of degree <= k, outputs of degree d hidden units < d."""

    def __init__(self, dim, hidden_size, hidden_layers, degrees):
        super().__init__()
        # hidden degrees cycle over 0..dim-2, as MADE's "sequential" connectivity; with dim 1 the outputs are constants
        hidden_degrees = torch.arange(hidden_size) % max(dim - 1, 1)
        layers, previous = [], degrees
        for _ in range(hidden_layers):
            layers += [MaskedLinear(len(previous), hidden_size, hidden_degrees[:, None] >= previous[None]), nn.ReLU()]
            previous = hidden_degrees
        self.hidden = nn.Sequential(*layers)
        self.output = MaskedLinear(hidden_size, 2 * dim, (degrees[:, None] > previous[None]).repeat(2, 1))
        self.register_buffer("degrees", degrees)

    def forward(self, z):
        hidden = self.hidden(z)  # bfloat16 under --bf16's autocast
        with torch.autocast(z.device.type, enabled=False):  # the output layer stays float32: m and log_a enter log p directly
            m, log_a = self.output(hidden.to(z.dtype)).chunk(2, -1)
        return (z - m) * torch.exp(-log_a), -log_a.sum(-1)


class FlowBatchNorm(nn.Module):
    """Batch norm as a flow layer (RealNVP, as in MAF): log|det| = sum(log_gamma - log(var + eps) / 2); eval: running stats."""

    def __init__(self, dim, momentum=0.1, eps=1e-5):
        super().__init__()
        self.log_gamma, self.beta = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.momentum, self.eps = momentum, eps

    def forward(self, z):
        mean, var = (z.mean(0), z.var(0, unbiased=False)) if self.training else (self.running_mean, self.running_var)
        if self.training:
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        y = (z - mean) / torch.sqrt(var + self.eps) * self.log_gamma.exp() + self.beta
        return y, (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum().expand(len(z))


class MAF(nn.Module):
    """MADE blocks (the order reversed between consecutive ones), optional batch norm, a N(0, I) base: log p(z) below."""

    def __init__(self, dim, blocks, hidden_size, hidden_layers, batch_norm):
        super().__init__()
        layers, degrees = [], torch.arange(dim)
        for _ in range(blocks):
            layers.append(MADE(dim, hidden_size, hidden_layers, degrees))
            degrees = degrees.flip(0)  # each variable is conditioned on every other one in some block
            if batch_norm:
                layers.append(FlowBatchNorm(dim))
        self.layers = nn.ModuleList(layers)

    def forward(self, z):  # u = f(z) and log|det df/dz|
        log_det = torch.zeros(len(z), device=z.device, dtype=z.dtype)
        for layer in self.layers:
            z, layer_log_det = layer(z)
            log_det = log_det + layer_log_det
        return z, log_det

    def log_prob(self, z):  # log N(f(z); 0, I) + log|det df/dz|
        u, log_det = self(z)
        return -0.5 * (u**2).sum(-1) - 0.5 * u.shape[-1] * math.log(2 * math.pi) + log_det


class CoupledFlow(nn.Module):
    """The agent's flow p_psi and the expert's q_phi; q_phi alone for numerator, an MLP x for regularnet."""

    def __init__(self, dim, variant, blocks, hidden_size, hidden_layers, batch_norm):
        super().__init__()
        self.variant = variant
        if variant == "regularnet":
            sizes = [dim] + [hidden_size] * hidden_layers
            self.net = nn.Sequential(*[m for i, o in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(i, o), nn.ReLU())])
            self.head = nn.Linear(sizes[-1], 1)
            return
        self.expert_flow = MAF(dim, blocks, hidden_size, hidden_layers, batch_norm)  # q_phi
        if variant != "numerator":
            self.agent_flow = MAF(dim, blocks, hidden_size, hidden_layers, batch_norm)  # p_psi

    def forward(self, z):
        """(x before squashing, log p_psi(z), log q_phi(z)); None where the variant has no such flow."""
        if self.variant == "regularnet":
            hidden = self.net(z)
            with torch.autocast(z.device.type, enabled=False):  # x feeds the DV loss: float32, as the flows' log p
                return self.head(hidden.to(z.dtype)).squeeze(-1), None, None
        log_q_expert = self.expert_flow.log_prob(z)
        if self.variant == "numerator":
            return -log_q_expert, None, log_q_expert  # r = -x = log q_phi
        log_p_agent = self.agent_flow.log_prob(z)
        return log_p_agent - log_q_expert, log_p_agent, log_q_expert


SQUASHED_VARIANTS = ("cfil", "regularnet", "indflow")


def flow_observation_dims(env_id, obs_dim, features, device=None):
    """The observation dims the flows see (--flow-features; None: all). Of Humanoid's 376 the official code keeps 270: no
    contact forces (their many all-zero dims make a density degenerate), nor the dims that are zero by construction."""
    if features == "auto" and env_id.startswith("Humanoid") and obs_dim == 376:
        return torch.cat([torch.arange(*span) for span in ((0, 45), (55, 185), (191, 269), (275, 292))]).to(device)
    if features == "auto" and env_id.startswith("Ant") and obs_dim == 111:
        return torch.arange(27, device=device)  # Ant with contact forces: the first 27, Ant-v4's default observation
    return None


def flow_input(mode, obs, actions, next_obs, obs_dims=None):
    """The variable the flows model: (s, a), s or (s, s') (the paper's regimes) of dims obs_dims; not normalised (official)."""
    if obs_dims is not None:
        obs, next_obs = obs[:, obs_dims], None if next_obs is None else next_obs[:, obs_dims]
    if mode == "sa":
        return torch.cat([obs, actions], -1)
    return obs if mode == "s" else torch.cat([obs, next_obs], -1)


def squash(x, scale, bound):
    """sigma(x) = a tanh(x / b): bounds the reward where the flows are evaluated far from their data (one demo is sparse)."""
    return bound * torch.tanh(x / scale)


def smooth(z, beta):
    """Alg. 1 smoothing z + beta z u, u ~ U(-1/2, 1/2); the official +1e-3 keeps zero dims from staying point masses."""
    return z + beta * (z + 1e-3) * (torch.rand_like(z) - 0.5)


def dv_loss(x_expert, x_agent):
    """Alg. 1 loss, the negated DV bound log E_{d_e}[e^x] - E_{d_pi}[x] (minimiser: x = log d_pi / d_e + const; -loss ~ KL)."""
    return torch.logsumexp(x_expert, 0) - math.log(len(x_expert)) - x_agent.mean()


def flow_regularizer(log_p_agent, log_q_expert):
    """Alg. 1 flow regularization -E_{d_pi}[log p_psi] - E_{d_e}[log q_phi]: each flow's likelihood of its own data."""
    return -log_p_agent.mean() - log_q_expert.mean()


def cfil_x(model, z, variant, scale, bound):
    """x of Alg. 1: sigma(log p_psi - log q_phi), unsquashed for nosquash / indflowns / numerator."""
    x = model(z)[0]
    return squash(x, scale, bound) if variant in SQUASHED_VARIANTS else x


def density_loss(model, expert_batch, agent_batch, variant, scale, bound, flow_reg):
    """Alg. 1 density loss of one (smoothed) expert and agent minibatch, and the stats to log."""
    n = len(expert_batch)
    x, log_p, log_q = model(torch.cat([expert_batch, agent_batch]))
    if variant == "numerator":
        loss = -log_q[:n].mean()  # q_phi by maximum likelihood on the demos only
        return loss, {"losses/expert_nll": loss}
    if variant in ("indflow", "indflowns"):
        loss = flow_regularizer(log_p[n:], log_q[:n])  # two independent maximum-likelihood fits
        return loss, {"losses/flow_mle": loss}
    if variant in SQUASHED_VARIANTS:
        x = squash(x, scale, bound)
    loss = dv_loss(x[:n], x[n:])
    stats = {"losses/dv_loss": loss, "charts/x_expert": x[:n].mean(), "charts/x_agent": x[n:].mean()}
    if variant != "regularnet":
        regularizer = flow_regularizer(log_p[n:], log_q[:n])
        stats["losses/flow_reg"] = regularizer
        loss = loss + flow_reg * regularizer
    return loss, stats


def update_density(model, optimizer, expert_data, rb, args, bf16=False, obs_dims=None):
    """Alg. 1 density step: --density-updates steps on smoothed demos and replay transitions (d_pi); the last one's stats."""
    model.train()
    for _ in range(args.density_updates):
        expert_batch = expert_data[torch.randint(0, len(expert_data), (args.density_batch,), device=expert_data.device)]
        agent_obs, agent_actions, _, agent_next_obs, _ = rb.sample(args.density_batch)
        agent_batch = flow_input(args.mode, agent_obs, agent_actions, agent_next_obs, obs_dims)
        with torch.autocast(expert_data.device.type, dtype=torch.bfloat16, enabled=bf16):
            expert, agent = smooth(expert_batch, args.smooth), smooth(agent_batch, args.smooth)
            loss, stats = density_loss(model, expert, agent, args.variant, args.squash_scale, args.squash_bound, args.flow_reg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return {**stats, "losses/density_loss": loss.detach()}


@torch.no_grad()
def replay_reward(model, obs, actions, next_obs, args, shift, bf16=False, obs_dims=None):
    """Alg. 1 policy step: r = -x ~ log d_e - log d_pi by the current flows, + shift (a for a squashed x, so r >= 0)."""
    with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=bf16):
        z = flow_input(args.mode, obs, actions, next_obs, obs_dims)
        return shift - cfil_x(model, z, args.variant, args.squash_scale, args.squash_bound)


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


def soft_q_loss(qf, qf_target, actor, batch, alpha, gamma):
    """Eq. 5-6: (Q_k(s,a) - [r + gamma (1 - d) (min_k Q'_k(s', a') - alpha log pi(a'|s'))])^2, a' ~ pi(s')."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        next_actions, next_log_pi = actor.get_action(next_obs)
        min_q_next = qf_target(next_obs, next_actions).min(0).values - alpha * next_log_pi
        q_target = rewards + gamma * (1 - terminations) * min_q_next
    q_values = qf(obs, actions)
    # sum over the critics: each critic gets the full MSE gradient, as with separate losses
    return F.mse_loss(q_values, q_target.expand_as(q_values), reduction="none").mean(1).sum(), q_values


def policy_loss(actor, qf, obs, alpha):
    """Eq. 7: E_s E_{a~pi}[alpha log pi(a|s) - min_k Q_k(s, a)] through the reparameterised a."""
    actions, log_pi = actor.get_action(obs)
    return (alpha * log_pi - qf(obs, actions).min(0).values).mean(), log_pi


def alpha_loss(log_alpha, log_pi, target_entropy):
    """Eq. 18: -alpha (log pi(a|s) + H_target), so alpha grows when the entropy drops below the target."""
    return (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()


def sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, global_step, bf16=False):
    """One SAC step: critics every call, actor and alpha policy_frequency times every policy_frequency calls, target
    critics every target_network_frequency calls. optimizers: {"q", "actor", "alpha"}. The entropy target is -|A|.
    bf16 autocasts the hidden layers' matmuls; weights, optimiser states, targets, log-probs and losses stay float32."""
    device_type, target_entropy = batch[0].device.type, -float(batch[1].shape[-1])
    alpha = log_alpha.exp().detach()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        qf_loss, q_values = soft_q_loss(qf, qf_target, actor, batch, alpha, args.gamma)
    optimizers["q"].zero_grad(set_to_none=True)
    qf_loss.backward()
    optimizers["q"].step()
    stats = {"losses/qf_loss": qf_loss.detach(), "losses/qf1_values": q_values[0].detach().mean()}

    if global_step % args.policy_frequency == 0:
        qf.requires_grad_(False)  # the actor's gradient flows through Q's input only (as Spinning Up freezes Q here)
        for _ in range(args.policy_frequency):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                actor_loss, log_pi = policy_loss(actor, qf, batch[0], alpha)
            optimizers["actor"].zero_grad(set_to_none=True)
            actor_loss.backward()
            optimizers["actor"].step()
            if args.autotune:
                loss = alpha_loss(log_alpha, log_pi, target_entropy)
                optimizers["alpha"].zero_grad(set_to_none=True)
                loss.backward()
                optimizers["alpha"].step()
                alpha = log_alpha.exp().detach()
        qf.requires_grad_(True)
        stats |= {"losses/actor_loss": actor_loss.detach(), "losses/alpha": alpha, "charts/entropy": -log_pi.detach().mean()}

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
    positive = "total_timesteps eval_frequency eval_episodes log_frequency subsample_frequency batch_size buffer_size"
    positive += " policy_frequency target_network_frequency hidden_size squash_scale squash_bound density_update_every"
    for name in (positive + " density_updates density_batch flow_blocks flow_hidden_size flow_hidden_layers").split():
        if not getattr(args, name) > 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if min(args.smooth, args.flow_reg, args.checkpoint_minutes, args.refill_steps) < 0:
        sys.exit("error: --smooth, --flow-reg, --checkpoint-minutes and --refill-steps must be non-negative.")
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
    bf16 = args.bf16 and bf16_is_fast(device)
    precision = "bf16-autocast" if bf16 else "fp32"

    env = make_env(args.env_id, args.seed)
    if not isinstance(env.action_space, gym.spaces.Box):
        sys.exit(f"error: cfil.py needs continuous (Box) actions (it runs on SAC) but {args.env_id} has {env.action_space}.")
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
    keys = {"sa": ("observations", "actions"), "s": ("observations",), "ss": ("observations", "next_observations")}[args.mode]
    expert_info, demos = load_expert(
        expert_dir, env, args.num_expert_trajectories, args.subsample_frequency, args.seed, keys, args.any_env
    )
    obs_dim, action_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))

    actor = Actor(env, args.hidden_size, args.log_std_min, args.log_std_max).to(device)
    qf = SoftQEnsemble(obs_dim, action_dim, args.hidden_size).to(device)
    qf_target = SoftQEnsemble(obs_dim, action_dim, args.hidden_size).to(device)
    qf_target.load_state_dict(qf.state_dict())
    log_alpha = torch.tensor(np.log(args.alpha), dtype=torch.float32, device=device, requires_grad=True)
    optimizers = {"q": make_optimizer(qf.parameters(), args.q_lr, device)}
    optimizers["actor"] = make_optimizer(actor.parameters(), args.policy_lr, device)
    optimizers["alpha"] = make_optimizer([log_alpha], args.q_lr, device)
    rb = ReplayBuffer(obs_dim, action_dim, args.buffer_size, device)
    flow_dims = flow_observation_dims(args.env_id, obs_dim, args.flow_features, device)
    demos = {key: torch.as_tensor(value, dtype=torch.float32, device=device).flatten(1) for key, value in demos.items()}
    expert_data = flow_input(args.mode, demos["observations"], demos.get("actions"), demos.get("next_observations"), flow_dims)
    flow_sizes = (args.flow_blocks, args.flow_hidden_size, args.flow_hidden_layers, args.flow_batch_norm)
    reward_model = CoupledFlow(expert_data.shape[1], args.variant, *flow_sizes).to(device).eval()
    optimizers["density"] = make_optimizer(reward_model.parameters(), args.density_lr, device)
    reward_shift = args.squash_bound if args.reward_shift and args.variant in SQUASHED_VARIANTS else 0.0
    # what a checkpoint holds, listed once (no replay buffer: --resume refills it)
    state = {"actor": actor, "qf": qf, "qf_target": qf_target, "log_alpha": log_alpha, "reward_model": reward_model}
    state.update({f"{name}_optimizer": optimizer for name, optimizer in optimizers.items()})
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
    def act_exploring(obs, global_step):
        if global_step <= args.learning_starts:
            return env.action_space.sample()
        return actor.get_action(torch.as_tensor(obs[None], dtype=torch.float32, device=device))[0][0].cpu().numpy()

    def run_evaluation(global_step):
        if not all(torch.isfinite(value) for value in stats.values()):
            sys.exit(f"error: non-finite loss before step {global_step}; lower --density-lr, --q-lr or --policy-lr.")
        act = lambda obs: actor.deterministic_action(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        with torch.no_grad():
            returns = evaluate(act, eval_env, args.eval_episodes, args.seed + 10_000)
        mean_return, elapsed = float(returns.mean()), time.time() - start_time
        row = {"global_step": global_step, "eval_return_mean": mean_return, "eval_return_std": float(returns.std())}
        row |= {"normalized_score": normalized_score(mean_return, expert_info), "wall_time": wall_offset + elapsed}
        row["sps"] = (global_step - start_step) / max(elapsed, 1e-9)
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        if args.track:
            wandb.log({"eval/return": mean_return, "eval/normalized_score": row["normalized_score"]}, step=global_step)
        progress_bar.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    stop_signals = []  # SIGINT (Ctrl-C) and SIGTERM (a session's end, a preemption): finish the step, checkpoint, exit
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda signum, frame: stop_signals.append(signum))

    start_time = saved_time = time.time()
    obs, _ = env.reset(seed=args.seed + start_step)
    if args.resume:  # the checkpoint left the replay buffer out: refill it with the current policy
        for _ in tqdm(range(args.refill_steps), desc="refilling the replay buffer", file=sys.stderr, mininterval=2.0):
            action = act_exploring(obs, start_step)
            next_obs, _, terminated, truncated, info = env.step(action)
            rb.add(obs, action, 0.0, next_obs, terminated)
            obs = next_obs if not (terminated or truncated) else env.reset()[0]
            progress["refill_env_steps"] += 1
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress_bar = tqdm(total=args.total_timesteps, initial=start_step, file=sys.stderr, desc=run_name, mininterval=2.0)
    stats = {}
    if start_step == 0:
        run_evaluation(0)
    for global_step in range(start_step + 1, args.total_timesteps + 1):
        action = act_exploring(obs, global_step)
        next_obs, _, terminated, truncated, info = env.step(action)
        # bootstrap through time-limit truncations: only a true termination zeroes the target
        rb.add(obs, action, 0.0, next_obs, terminated)  # reward 0: CFIL's r = -x is recomputed on every minibatch
        obs = next_obs
        if terminated or truncated:
            if args.track:
                episode = {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]}
                wandb.log(episode, step=global_step)
            obs, _ = env.reset()

        if global_step % args.density_update_every == 0:  # Alg. 1: a few gradient steps on the flows, logged below
            stats |= update_density(reward_model, optimizers["density"], expert_data, rb, args, bf16, flow_dims)
        if global_step > args.learning_starts:
            obs_batch, actions, _, next_obs_batch, terminations = rb.sample(args.batch_size)
            rewards = replay_reward(reward_model, obs_batch, actions, next_obs_batch, args, reward_shift, bf16, flow_dims)
            batch = (obs_batch, actions, rewards, next_obs_batch, terminations)
            stats |= sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, global_step, bf16)
            if args.track and global_step % args.log_frequency == 0:
                sps = (global_step - start_step) / (time.time() - start_time)
                stats["charts/reward_mean"] = rewards.mean()
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
