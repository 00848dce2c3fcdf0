"""Coupled Flow Imitation Learning: SAC on the reward -x, x a log density ratio modelled by a coupled pair of flows.

CFIL (Freund, Sarafian, Kraus, "A Coupled Flow Approach to Imitation Learning", ICML 2023, arXiv 2305.00303) matches
the agent's state(-action) distribution d_pi to the expert's d_e by minimising the reverse KL(d_pi || d_e), whose
negative is the expected return under the reward log d_e - log d_pi. It estimates that log ratio through the
Donsker-Varadhan (DV) representation KL(P || Q) = sup_x E_P[x] - log E_Q[e^x], maximised at x* = log P/Q + const,
parameterising x as the difference of two normalizing flows, x = log p_psi - log q_phi (the "coupled flow"): at the
DV optimum p_psi / q_phi is the ratio d_pi / d_e, so r = -x = log d_e - log d_pi. Both flows are trained only through
the DV loss (plus a maximum-likelihood regularizer), which couples them: neither alone need be a density of the data.
Sign convention, checked against gfreund123/cfil (rewarder.py, CoupledFlow): flow1 = p_psi is the agent's flow (its
regularizer is -E_agent log p_psi), flow2 = q_phi is the expert's (-E_expert log q_phi); x = log p_psi - log q_phi;
loss = log mean_expert e^x - mean_agent x; reward -x, shifted by +a when squashed so that it is non-negative.
The map below names Algorithm 1's steps and the paper's terms:
  MADE, MAF                      the flows: masked autoregressive flows (Papamakarios et al. 2017, arXiv 1705.07057),
                                 MADE blocks (Germain et al. 2015) with a Gaussian base; official: 1 block, 3 hidden
                                 layers of 256, ReLU, sequential order, no batch norm, no input normalisation
  squash                         the squashing sigma(x) = a tanh(x / b) of log p_psi - log q_phi (official b=15, a=6)
  dv_loss                        Alg. 1 loss, the negated DV bound: log E_{d_e}[e^x] - E_{d_pi}[x]
  flow_regularizer               Alg. 1 flow regularization, weight alpha: -E_{d_pi}[log p_psi] - E_{d_e}[log q_phi]
  smooth                         Alg. 1 smoothing (akin to dequantization): z + beta z u, u ~ U(-1/2, 1/2) per dimension
  cfil_reward, replay_reward     Alg. 1's policy step: SAC on r = -x, recomputed by the current flows (no_grad) on
                                 every SAC minibatch; the replay buffer stores no reward
  update_density, main loop      Alg. 1: every --density-update-every env steps, --density-updates minibatches of
                                 --density-batch expert and replay transitions; one SAC update per env step
Regimes: `--mode sa | s | ss` models (s, a), s or (s, s'); state-only modes never read the demos' actions.
Ablations (`--variant`): `nosquash` (no sigma), `regularnet` (the same squashed DV estimator with an MLP x instead of
two flows), `indflow` / `indflowns` (two flows trained independently by maximum likelihood, reward
sigma(log q_phi - log p_psi) / log q_phi - log p_psi), `numerator` (r = log q_phi, the expert flow alone).
SAC as in the official spinningup SAC (lr 1e-3, fixed alpha 0.2, batch 100, polyak 0.995, 2000 random steps, one
update per env step; spinningup starts updating after 1000 steps in blocks of 50, here after the random steps).
`--resume` continues from checkpoints/<env-id>__<exp-name>__<seed>/checkpoint.pt (SAC networks and optimisers, the
flows (or the regularnet MLP) and their optimizer, counters, RNG states, eval rows: a few MB), so that a long run spans
several sessions; the replay buffer is not saved, so a resumed run first refills it with `--refill-steps` steps of the
current policy, and eval.csv continues in the same run folder.
`--bf16` (on where the hardware has it) runs the hidden layers' matmuls of the SAC networks and of the flows in
bfloat16 (mixed precision); the flows' shifts, log-scales, log-determinants and log-densities, and every loss, stay
float32.
"""

import json
import math
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
    total_timesteps: int = 320_000
    """total environment steps of the experiment (the paper's 80 epochs of 4000 steps)"""
    eval_frequency: int = 4_000
    """evaluate the deterministic policy every this many environment steps (the paper's epoch)"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_frequency: int = 1000
    """the training statistics (losses, SPS) go to the log every this many steps"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 1
    """number of expert demo episodes to imitate (the first ones of demos.npz; the paper uses a single one)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory (the paper's subsampled regime: 10-100)"""

    # CFIL
    mode: Literal["sa", "s", "ss"] = "sa"
    """what the flows model: state-action pairs, states only, or state-next-state pairs (the last two never read
    the demos' actions)"""
    variant: Literal["cfil", "nosquash", "regularnet", "indflow", "indflowns", "numerator"] = "cfil"
    """CFIL or one of the paper's ablations (see the module docstring)"""
    density_lr: float = 1e-3
    """learning rate of the Adam optimizer of the flows (or of the regularnet MLP)"""
    density_update_every: int = 1_000
    """Alg. 1: train the flows every this many environment steps"""
    density_updates: int = 10
    """Alg. 1: gradient steps on the flows at each of those updates"""
    density_batch: int = 100
    """Alg. 1: expert and agent transitions per flow gradient step (each)"""
    smooth: float = 0.5
    """smoothing beta: each flow input z becomes z + beta (z + 1e-3) u, u ~ U(-1/2, 1/2), when training the flows
    (0: off)"""
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
    """a batch-norm flow layer after each MADE block (batch statistics when training, running ones for rewards; the
    official code, whose paper runs leave it off, uses each batch's own statistics everywhere)"""
    flow_features: Literal["auto", "all"] = "auto"
    """the observation dims the flows model: `auto` leaves out those the official code leaves out (rewarder.py), on
    Humanoid (376 dims) the external contact forces and the dims that are zero by construction, 270 kept, and on an Ant
    with contact forces (111 dims) all but the first 27; elsewhere, and with `all`, every dim"""

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
    """autocast the hidden layers' matmuls to bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs
    with AMX or AVX512-BF16; ignored elsewhere); master weights, optimiser states, targets, log-probs, losses stay float32"""

    # checkpoints
    checkpoint_frequency: int = 20_000
    """save a resumable checkpoint every this many environment steps (0: never; default: five of the paper's epochs)"""
    checkpoint_minutes: float = 30.0
    """also save it every this many minutes of wall time (0: never), and always when stopped by SIGINT/SIGTERM"""
    checkpoint_dir: Optional[str] = None
    """checkpoint folder (default: checkpoints/<env-id>__<exp-name>__<seed>/, git-ignored; long runs use a tracked
    folder such as long_runs/, see README)"""
    resume: bool = False
    """continue from the checkpoint in checkpoint_dir"""
    refill_steps: int = 50_000
    """on --resume, environment steps of the current policy that refill the replay buffer (checkpoints leave it out)
    before updates continue; not counted in global_step, recorded as refill_env_steps"""


# ----------------------------------------------------------------------------------------------------------- CFIL
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is zero outside a fixed 0/1 mask (MADE, Germain et al. 2015). The mask multiplies
    the weight once, at initialisation, and its gradient at every backward pass, so no optimiser step moves a masked
    entry (Adam's moments of a zero gradient stay zero, weight decay of a zero weight is zero) and the forward pass is
    nn.Linear's: no mask product on each of the many reward minibatches."""

    def __init__(self, in_features, out_features, mask):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float(), persistent=False)  # rebuilt from the degrees, not checkpointed
        with torch.no_grad():
            self.weight.mul_(self.mask)
        self.weight.register_hook(lambda grad: grad * self.mask)


class MADE(nn.Module):
    """One MAF block (Papamakarios et al. 2017, Eq. 4-5): u_i = (z_i - m_i(z_<i)) exp(-log_a_i(z_<i)), so du/dz is
    triangular in the variable order `degrees` (degrees[i] = position of z_i) and log|det du/dz| = -sum_i log_a_i.
    Masks: a hidden unit of degree k sees inputs of degree <= k, an output of degree d sees hidden units of degree < d."""

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
        # the output layer stays float32: the shift m and log-scale log_a enter u and log|det|, and so log p, directly
        with torch.autocast(z.device.type, enabled=False):
            m, log_a = self.output(hidden.to(z.dtype)).chunk(2, -1)
        return (z - m) * torch.exp(-log_a), -log_a.sum(-1)


class FlowBatchNorm(nn.Module):
    """Batch normalization as a flow layer (RealNVP, Dinh et al. 2017, as used in MAF): y = (z - mu) / sqrt(var + eps)
    * exp(log_gamma) + beta with log|det| = sum(log_gamma - log(var + eps) / 2); running statistics in eval mode."""

    def __init__(self, dim, momentum=0.1, eps=1e-5):
        super().__init__()
        self.log_gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.momentum, self.eps = momentum, eps

    def forward(self, z):
        if self.training:
            mean, var = z.mean(0), z.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = (z - mean) / torch.sqrt(var + self.eps) * self.log_gamma.exp() + self.beta
        return y, (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum().expand(len(z))


class MAF(nn.Module):
    """Masked autoregressive flow: MADE blocks, the variable order reversed between consecutive blocks, optional
    batch norm after each, and a standard Gaussian base: log p(z) = log N(f(z); 0, I) + log|det df/dz|."""

    def __init__(self, dim, blocks, hidden_size, hidden_layers, batch_norm):
        super().__init__()
        layers, degrees = [], torch.arange(dim)
        for _ in range(blocks):
            layers.append(MADE(dim, hidden_size, hidden_layers, degrees))
            degrees = degrees.flip(0)  # each variable is conditioned on every other one in some block
            if batch_norm:
                layers.append(FlowBatchNorm(dim))
        self.layers = nn.ModuleList(layers)

    def forward(self, z):
        """u = f(z) and log|det df/dz|."""
        log_det = torch.zeros(len(z), device=z.device, dtype=z.dtype)
        for layer in self.layers:
            z, layer_log_det = layer(z)
            log_det = log_det + layer_log_det
        return z, log_det

    def log_prob(self, z):
        u, log_det = self(z)
        return -0.5 * (u**2).sum(-1) - 0.5 * u.shape[-1] * math.log(2 * math.pi) + log_det


class CoupledFlow(nn.Module):
    """The log-ratio model of each --variant: the agent flow p_psi and the expert flow q_phi (cfil, nosquash, indflow,
    indflowns), q_phi alone (numerator), or an MLP in place of log p_psi - log q_phi (regularnet)."""

    def __init__(self, dim, variant, blocks, hidden_size, hidden_layers, batch_norm):
        super().__init__()
        self.variant = variant
        if variant == "regularnet":
            sizes = [dim] + [hidden_size] * hidden_layers
            layers = [
                module for fan_in, fan_out in zip(sizes[:-1], sizes[1:]) for module in (nn.Linear(fan_in, fan_out), nn.ReLU())
            ]
            self.net = nn.Sequential(*layers)
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


def flow_observation_dims(env_id, obs_dim, features):
    """Indices of the observation dims the flows see (--flow-features), or None for all. Humanoid's 376 are qpos[2:] and
    qvel (45), cinert (14 bodies x 10), cvel (14 x 6), qfrc_actuator (23) and cfrc_ext (14 x 6); the official code keeps
    270: it drops the contact forces cfrc_ext, whose many all-zero dims make a flow's density degenerate, and the world
    body's cinert and cvel and the free joint's actuator forces, which are zero by construction."""
    if features == "all":
        return None
    if env_id.startswith("Humanoid") and obs_dim == 376:
        return torch.cat([torch.arange(0, 45), torch.arange(55, 185), torch.arange(191, 269), torch.arange(275, 292)])
    if env_id.startswith("Ant") and obs_dim == 111:
        return torch.arange(27)  # Ant with contact forces: the first 27, the default Ant-v4's whole observation
    return None


def flow_input(mode, obs, actions, next_obs, obs_dims=None):
    """The variable the flows model: (s, a), s, or (s, s') (the paper's three regimes), of the observation dims obs_dims
    (flow_observation_dims; None: all)."""
    if obs_dims is not None:
        obs, next_obs = obs[:, obs_dims], None if next_obs is None else next_obs[:, obs_dims]
    if mode == "sa":
        return torch.cat([obs, actions], -1)
    return obs if mode == "s" else torch.cat([obs, next_obs], -1)


def squash(x, scale, bound):
    """Squashing sigma(x) = a tanh(x / b): bounds the log ratio, and so the reward, where the flows are
    evaluated far from their data (one expert trajectory leaves most of the space without density)."""
    return bound * torch.tanh(x / scale)


def smooth(z, beta):
    """Alg. 1 smoothing z + beta z u, u ~ U(-1/2, 1/2) per dimension (noise proportional to each value, like
    dequantization); the official +1e-3 keeps exactly-zero dimensions from staying point masses."""
    return z + beta * (z + 1e-3) * (torch.rand_like(z) - 0.5)


def dv_loss(x_expert, x_agent):
    """Alg. 1 loss, the negated Donsker-Varadhan bound of KL(d_pi || d_e): log E_{d_e}[e^x] - E_{d_pi}[x]; its
    minimiser is x = log d_pi / d_e + const, and -dv_loss estimates the KL. logsumexp keeps e^x from overflowing."""
    return torch.logsumexp(x_expert, 0) - math.log(len(x_expert)) - x_agent.mean()


def flow_regularizer(log_p_agent, log_q_expert):
    """Alg. 1 flow regularization -E_{d_pi}[log p_psi] - E_{d_e}[log q_phi]: each flow also does maximum likelihood on
    its own data, so that both stay densities of something sensible (alone, it is the indflow ablation's loss)."""
    return -log_p_agent.mean() - log_q_expert.mean()


def cfil_x(model, z, variant, scale, bound):
    """x of Alg. 1: sigma(log p_psi - log q_phi), unsquashed for nosquash / indflowns / numerator."""
    x = model(z)[0]
    return squash(x, scale, bound) if variant in SQUASHED_VARIANTS else x


def cfil_reward(x, shift):
    """r = -x ~ log d_e - log d_pi, shifted by a (for a squashed x) so that the reward is non-negative."""
    return shift - x


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
    """Alg. 1 density step: args.density_updates gradient steps, each on args.density_batch smoothed expert demos and as
    many smoothed replay transitions (samples of d_pi); returns the last loss and its stats. bf16 autocasts the flows'
    hidden matmuls; log-determinants, log-probabilities and losses stay float32."""
    model.train()
    for _ in range(args.density_updates):
        expert_batch = expert_data[torch.randint(0, len(expert_data), (args.density_batch,), device=expert_data.device)]
        agent_obs, agent_actions, agent_next_obs, _ = rb.sample(args.density_batch)
        agent_batch = flow_input(args.mode, agent_obs, agent_actions, agent_next_obs, obs_dims)
        with torch.autocast(expert_data.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, stats = density_loss(
                model,
                smooth(expert_batch, args.smooth),
                smooth(agent_batch, args.smooth),
                args.variant,
                args.squash_scale,
                args.squash_bound,
                args.flow_reg,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return loss.detach(), stats


@torch.no_grad()
def replay_reward(model, obs, actions, next_obs, args, shift, bf16=False, obs_dims=None):
    """Alg. 1 policy step: r = -x of a replay minibatch by the current flows (recomputed, never stored, so that the whole
    buffer always carries the reward of the latest density step)."""
    with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=bf16):
        z = flow_input(args.mode, obs, actions, next_obs, obs_dims)
        x = cfil_x(model, z, args.variant, args.squash_scale, args.squash_bound)
    return cfil_reward(x, shift)


# -------------------------------------------------------------------------------------- the SAC block (of sac.py)
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
    """Transitions as rows [obs, action, next_obs, termination] of one preallocated tensor on the training device: a
    minibatch is one index gather. Checkpoints leave it out (hundreds of MB); --resume refills it. No rewards: CFIL's
    reward is a function of the current flows, recomputed on every sampled minibatch."""

    def __init__(self, obs_dim, action_dim, size, device):
        self.widths = (obs_dim, action_dim, obs_dim, 1)
        self.rows = torch.zeros(size, sum(self.widths), device=device)
        self.size, self.pos, self.full = size, 0, False

    def add(self, obs, action, next_obs, termination):
        row = np.concatenate([np.ravel(obs), np.ravel(action), np.ravel(next_obs), [termination]])
        self.rows[self.pos] = torch.from_numpy(row.astype(np.float32))
        self.pos = (self.pos + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, batch_size):
        index = torch.randint(0, self.size if self.full else self.pos, (batch_size,), device=self.rows.device)
        obs, actions, next_obs, terminations = self.rows[index].split(self.widths, -1)
        return obs, actions, next_obs, terminations.squeeze(-1)


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


def sac_update(
    batch,
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
):
    """One SAC step: critics every call, actor and alpha policy_frequency times every policy_frequency calls.
    bf16 autocasts the hidden layers' matmuls; weights, optimiser states, targets, log-probs and losses stay float32."""
    device_type = batch[0].device.type
    alpha = log_alpha.exp().detach()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        qf_loss, q_values = soft_q_loss(qf, qf_target, actor, batch, alpha, args.gamma)
    q_optimizer.zero_grad(set_to_none=True)
    qf_loss.backward()
    q_optimizer.step()
    stats = {"losses/qf_loss": qf_loss.detach(), "losses/qf1_values": q_values[0].detach().mean()}

    if global_step % args.policy_frequency == 0:
        qf.requires_grad_(False)  # the actor's gradient flows through Q's input only (as Spinning Up freezes Q here)
        for _ in range(args.policy_frequency):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                actor_loss, log_pi = policy_loss(actor, qf, batch[0], alpha)
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
        "density_update_every",
        "density_updates",
        "density_batch",
        "flow_blocks",
        "flow_hidden_size",
        "flow_hidden_layers",
        "hidden_size",
    ):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.squash_scale <= 0 or args.squash_bound <= 0:
        sys.exit("error: --squash-scale and --squash-bound must be positive.")
    for name in ("smooth", "flow_reg", "checkpoint_frequency", "checkpoint_minutes", "refill_steps"):
        if not getattr(args, name) >= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be non-negative, got {getattr(args, name)}.")
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
    bf16 = args.bf16 and bf16_is_fast(device)

    run_name = checkpoint["run_name"] if checkpoint else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    env = make_env(args.env_id, args.seed)
    if not isinstance(env.action_space, gym.spaces.Box):
        sys.exit(
            f"error: cfil.py needs continuous (Box) actions (its RL algorithm is SAC) but {args.env_id} has "
            f"{env.action_space}."
        )
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    expert_info = load_expert_info(expert_dir, env, required=True)
    # state-only modes never read the demos' actions
    keys = {"sa": ("observations", "actions"), "s": ("observations",), "ss": ("observations", "next_observations")}[args.mode]
    demos = load_demos(expert_dir, env, args.num_expert_trajectories, args.subsample_frequency, args.seed, keys)
    obs_dim, action_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
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

    actor = Actor(env, args.hidden_size, args.log_std_min, args.log_std_max).to(device)
    qf = SoftQEnsemble(obs_dim, action_dim, args.hidden_size).to(device)
    qf_target = SoftQEnsemble(obs_dim, action_dim, args.hidden_size).to(device)
    qf_target.load_state_dict(qf.state_dict())
    q_optimizer = make_optimizer(qf.parameters(), args.q_lr, device)
    actor_optimizer = make_optimizer(actor.parameters(), args.policy_lr, device)
    target_entropy = -float(action_dim)
    log_alpha = torch.tensor(np.log(args.alpha), dtype=torch.float32, device=device, requires_grad=True)
    alpha_optimizer = make_optimizer([log_alpha], args.q_lr, device)
    rb = ReplayBuffer(obs_dim, action_dim, args.buffer_size, device)
    # the expert's flow inputs, once; no input normalisation, as in the official runs (flow_norm 'none')
    demo_tensors = {
        key: torch.as_tensor(value, dtype=torch.float32, device=device).reshape(len(value), -1) for key, value in demos.items()
    }
    flow_obs_dims = flow_observation_dims(args.env_id, obs_dim, args.flow_features)
    if flow_obs_dims is not None:
        flow_obs_dims = flow_obs_dims.to(device)
    expert_data = flow_input(
        args.mode,
        demo_tensors["observations"],
        demo_tensors.get("actions"),
        demo_tensors.get("next_observations"),
        flow_obs_dims,
    )
    reward_model = (
        CoupledFlow(
            expert_data.shape[1],
            args.variant,
            args.flow_blocks,
            args.flow_hidden_size,
            args.flow_hidden_layers,
            args.flow_batch_norm,
        )
        .to(device)
        .eval()
    )
    density_optimizer = make_optimizer(reward_model.parameters(), args.density_lr, device)
    reward_shift = args.squash_bound if args.reward_shift and args.variant in SQUASHED_VARIANTS else 0.0
    # the state a checkpoint holds, listed once (no replay buffer: --resume refills it)
    saved_state = {
        "actor": actor,
        "qf": qf,
        "qf_target": qf_target,
        "q_optimizer": q_optimizer,
        "actor_optimizer": actor_optimizer,
        "alpha_optimizer": alpha_optimizer,
        "log_alpha": log_alpha,
        "reward_model": reward_model,
        "density_optimizer": density_optimizer,
    }

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

    @torch.no_grad()
    def act_deterministic(obs):
        return actor.deterministic_action(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    @torch.no_grad()
    def act_exploring(obs, global_step):
        if global_step <= args.learning_starts:
            return env.action_space.sample()
        return actor.get_action(torch.as_tensor(obs[None], dtype=torch.float32, device=device))[0][0].cpu().numpy()

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
            rb.add(obs, action, next_obs, terminated)
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
        # bootstrap through time-limit truncations: only a true termination zeroes the target
        rb.add(obs, action, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            log_metrics(
                args.track,
                {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]},
                global_step,
            )
            obs, _ = env.reset()

        if global_step % args.density_update_every == 0:
            # Alg. 1: a few gradient steps on the flows, expert demos vs the whole replay buffer
            loss, density_stats = update_density(reward_model, density_optimizer, expert_data, rb, args, bf16, flow_obs_dims)
            exit_if_non_finite(
                [loss],
                f"error: non-finite density loss at step {global_step} ({float(loss)}); lower --density-lr or raise --smooth.",
            )
            log_metrics(args.track, {"losses/density_loss": loss, **density_stats}, global_step)

        if global_step > args.learning_starts:
            batch_obs, batch_actions, batch_next_obs, batch_terminations = rb.sample(args.batch_size)
            rewards = replay_reward(
                reward_model, batch_obs, batch_actions, batch_next_obs, args, reward_shift, bf16, flow_obs_dims
            )
            stats = sac_update(
                (batch_obs, batch_actions, rewards, batch_next_obs, batch_terminations),
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
            )
            # checked where logged, not every update: the check waits on the GPU
            if global_step % args.log_frequency == 0:
                stats["charts/reward_mean"] = rewards.mean()
                exit_if_non_finite(
                    stats.values(),
                    f"error: non-finite SAC loss at step {global_step} ({ {k: float(v) for k, v in stats.items()} }); "
                    f"lower --q-lr or --policy-lr.",
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
