"""Non-Adversarial Imitation Learning: SAC on r = -log r~(s,a) + log pi~(a|s), in the Discriminator-Actor-Critic loop.

NAIL (Arenz & Neumann 2020, "Non-Adversarial Imitation Learning and its Connections to Adversarial Methods", arXiv
2008.03525) minimises the reverse KL(q_pi(s,a) || p(s,a)) between the agent's state-action distribution q and the
expert's p by iterations t = 0, 1, ...: sample from the current policy pi~ = pi_t (its distribution q_t), estimate the
density ratio r~ = q_t / p with a discriminator, then solve the maximum-entropy RL problem with the reward
r_t(s,a) = -log r~(s,a) + log pi~(a|s). The paper's step-based reward r^lb_pi~(s,a) = log q(s,a)/p_pi~(s,a) + log pi~(a|s)
is r_t with our letters swapped: the paper's q is the expert's and p_pi~ the agent's occupancy, both discounted
((1-gamma) sum_t gamma^t). AIRL is an instance: its f = log D/(1-D) + log pi_t at the optimum is r_t.
What an iteration guarantees. With an exact r~ and the KL(pi || pi~) term weighted by alpha, the RL step maximises
  L_alpha(pi) = -E_q[log q_t(s,a)/p(s,a)] - alpha E_{q(s)} KL(pi(.|s) || pi~(.|s)),
while -KL(q || p) = -E_q[log q_t/p] - KL(q(s) || q_t(s)) - E_{q(s)} KL(pi || pi~), and the joint convexity of KL with the
chain rule over trajectories gives 0 <= KL(q(s) || q_t(s)) <= gamma/(1-gamma) E_{q(s)} KL(pi || pi~); so, with all three
equal at pi = pi~,
  L_{1/(1-gamma)}(pi) <= -KL(q || p) <= L_1(pi).
The per-step weight alpha = 1 (the default: r_t itself) bounds -KL from above, not below. Its step is a
KL(pi || pi~)-regularised move on the frozen log-ratio whose log pi~ cancels the entropy bonus near pi~ (no entropy
drift), but a policy that scores above pi~ on L_1 can still be farther from the expert: a step can increase KL(q || p).
The trajectory-level weight alpha = 1/(1-gamma) (`--alpha 100` at gamma 0.99) gives the lower bound: a policy that
scores above pi~ on it has KL(q || p) no larger than pi~'s, a monotone improvement, at the price of far smaller steps.
Both readings assume an exact ratio and discounted occupancies, where the discriminator here weighs its samples
undiscounted (as DAC).
How the log pi~ term enters SAC: r_t - alpha log pi = -log r~ - alpha (log pi - log pi~) at alpha = 1, so we train on
the reward -log r~ and replace SAC's entropy bonus -alpha log pi(a|s) by the KL term -alpha (log pi(a|s) - log pi~(a|s))
in the critic's target and the actor's loss. The soft Q-function of the paper's reward is ours plus log pi~(a|s), the
actor's loss is the same and so is the optimum; but log pi~ is now only evaluated at actions of the current policy (one
epoch from pi~), where a reward computed on replayed actions of long-gone policies would sit far in pi~'s tails (on
Hopper-v4 that form collapsed after 10k steps: README, Results); and it is scored at the actor's own pre-tanh sample u,
so the tanh change of variables, identical in log pi and log pi~, cancels exactly even where the actions saturate.
Plain AIL (`--reward ail`: r = -log r~ with SAC's entropy) is the same loop without the reference term.
Map to this file:
  iteration t (--epoch-steps)  the reference pi~ is a frozen copy of the actor taken at the start of each epoch; it
                               alone collects that epoch's transitions (the uniform policy in the warm-up epochs)
  `Discriminator`              logit(s,a) -> log q_t(s,a)/p(s,a) (paper: log p_pi~/q), logistic regression: agent 1, expert 0
  `discriminator_loss`         the binary cross-entropy, trained by `update_discriminator` at each epoch's end on that
                               epoch's transitions (q_t) against the demos, --discriminator-updates-per-step minibatches
                               per collected step; every sample weighs 1 (undiscounted, as DAC), where the paper's
                               occupancies are gamma-discounted
  `gradient_penalty`           as DAC (Kostrikov et al. 2019, arXiv 1809.02925): WGAN-GP (Gulrajani et al. 2017, arXiv
                               1704.00028, Eq. 3) (||grad logit(x_hat)|| - 1)^2 on expert/agent interpolates
  `add_absorbing_state`        DAC's absorbing states: a terminated transition leads to an absorbing state s_a (zeros plus an
                               indicator feature) with a self-transition (s_a, 0, s_a) whose reward the discriminator
                               learns like any other; every target bootstraps (none is zeroed), truncations keep their
                               real next state; expert absorbing transitions (`expert_transitions`) are never subsampled
                               and weigh 1/--subsample-frequency in the discriminator loss (as google-research/dac)
  `log_ratio_reward`           r = -log r~, computed under no_grad on every SAC minibatch from the current
                               discriminator (the replay buffer stores no reward)
  `reference_log_prob`         log pi~(a|s) at the current policy's pre-tanh samples, in the critic target and actor
                               loss; none in the absorbing state (a single action)
  `soft_q_loss` ... `sac_update`  SAC (sac.py's block; Haarnoja et al. 2018, arXiv 1812.05905, Eq. 5-7, 18) with DAC's
                               absorbing-state target (zero action, no entropy in s_a) and no actor update on s_a;
                               --updates-per-step SAC updates per collected step at each epoch's end, on the whole buffer
alpha, fixed at 1 by default, weighs the KL term (see above; --autotune tunes it for a target entropy instead, which
leaves both bounds). log pi~ is clipped below at --reference-log-prob-min per action dimension, a guard of ours against a
policy that strays far from a narrow pi~ within one epoch; on-policy log pi~ sits well above it.
Discriminator (DAC): two tanh layers of 256, Adam 1e-3, batches of 100, gradient penalty 10.
`--resume` continues from checkpoints/<env-id>__<exp-name>__<seed>/checkpoint.pt (SAC networks and optimisers, the
discriminator and its optimizer, the frozen reference pi~, the epoch counters, RNG states, eval rows: a few MB), so that
a long run spans several sessions; the replay buffer is not saved, so a resumed run first refills it with
`--refill-steps` steps of the epoch's policy pi~. `--bf16` (on where the hardware has it) runs the SAC networks' hidden
layers' matmuls in bfloat16 (mixed precision).
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

    # NAIL
    reward: Literal["nail", "ail"] = "nail"
    """`nail`: r = -log r~(s,a) + log pi~(a|s) (as -log r~ with the KL to pi~ in place of SAC's entropy); `ail`:
    r = -log r~(s,a) with SAC's entropy, the same loop without the reference term"""
    epoch_steps: int = 1_000
    """environment steps per NAIL iteration, collected by the reference policy frozen at the epoch's start (DAC: one
    rollout of up to 1000 steps between updates)"""
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
    """lower clip of log pi~(a|s) per action dimension in NAIL's KL term (a guard, see the docstring)"""
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
    """environment steps with uniformly random actions before learning starts (DAC: 1000); the first update runs at
    the end of the epoch that reaches it"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network optimizer"""
    policy_frequency: int = 2
    """the actor is updated every this many steps, this many times (delayed updates as in TD3)"""
    target_network_frequency: int = 1
    """the frequency of updates for the target networks"""
    alpha: float = 1.0
    """weight of the KL(pi || pi~) term (of SAC's entropy under --reward ail): 1 is the paper's per-step reward r_t, an
    upper bound on -KL(q || p); 1/(1-gamma) (100 at gamma 0.99) the trajectory-level lower bound: a policy that scores
    above pi~ on it is no farther from the expert (see the docstring)"""
    autotune: bool = False
    """automatic tuning of alpha for a target entropy (SAC Eq. 18; it leaves both of the docstring's bounds)"""
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
    checkpoint_frequency: int = 50_000
    """save a resumable checkpoint every this many environment steps (0: never)"""
    checkpoint_minutes: float = 30.0
    """also save it every this many minutes of wall time (0: never), and always when stopped by SIGINT/SIGTERM"""
    checkpoint_dir: Optional[str] = None
    """checkpoint folder (default: checkpoints/<env-id>__<exp-name>__<seed>/, git-ignored; long runs use a tracked
    folder such as long_runs/, see README)"""
    resume: bool = False
    """continue from the checkpoint in checkpoint_dir"""
    refill_steps: int = 50_000
    """on --resume, environment steps of the epoch's policy pi~ that refill the replay buffer (checkpoints leave it out)
    before updates continue; not counted in global_step, recorded as refill_env_steps"""


# ----------------------------------------------------------------------------------------------------------- NAIL
class Discriminator(nn.Module):
    """logit(s, a); trained by `discriminator_loss` (agent 1, expert 0) it estimates log q_t(s,a)/p(s,a) = log r~, the
    negated log density ratio log q/p_pi~ of the paper's reward (its q is the expert, p_pi~ the agent)."""

    def __init__(self, in_dim, hidden_size):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(in_dim, hidden_size),
            nn.Tanh(),
            nn.Linear(hidden_size, hidden_size),
            nn.Tanh(),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, x):
        return self.network(x).squeeze(-1)


def add_absorbing_state(obs, actions, next_obs, terminations):
    """DAC's absorbing states on a batch of transitions (numpy): observations gain an indicator feature (0: a real state); a
    terminated transition's next state becomes the absorbing state s_a = (0, ..., 0, 1), and one self-transition
    (s_a, 0, s_a) is appended per termination. Truncated transitions are not terminations: their next state stays."""
    terminations = np.asarray(terminations, dtype=bool)
    real = lambda x: np.concatenate([x, np.zeros((len(x), 1), dtype=np.float32)], 1)
    absorbing = np.zeros((1, obs.shape[1] + 1), dtype=np.float32)
    absorbing[0, -1] = 1
    next_obs = np.where(terminations[:, None], absorbing, real(next_obs))
    extra = int(terminations.sum())
    return (
        np.concatenate([real(obs), np.repeat(absorbing, extra, 0)]),
        np.concatenate([actions, np.zeros((extra, actions.shape[1]), dtype=actions.dtype)]),
        np.concatenate([next_obs, np.repeat(absorbing, extra, 0)]).astype(np.float32),
    )


def expert_transitions(expert_dir, env, num_trajectories, subsample_frequency, seed):
    """The demos' (s, a) pairs with DAC's absorbing states (numpy), and their weights in `discriminator_loss`. As DAC,
    the absorbing states are added before subsampling and never dropped: one (s_a, 0) per terminated demo episode, even
    where subsampling dropped its terminal transition, weighing 1/subsample_frequency where every other pair weighs 1
    (the subsampled pairs stand for subsample_frequency transitions each, the absorbing ones for one)."""
    demos = load_demos(
        expert_dir,
        env,
        num_trajectories,
        subsample_frequency,
        seed,
        ("observations", "actions", "next_observations", "terminations"),
    )
    num_terminated = int(load_demos(expert_dir, env, num_trajectories, 1, seed, ("terminations",))["terminations"].sum())
    obs, actions, _ = add_absorbing_state(
        demos["observations"], demos["actions"].astype(np.float32), demos["next_observations"], demos["terminations"]
    )
    missing = num_terminated - int(np.sum(demos["terminations"]))  # terminal transitions that subsampling dropped
    obs = np.concatenate([obs, np.repeat(np.eye(obs.shape[1], dtype=np.float32)[-1:], missing, 0)])
    actions = np.concatenate([actions, np.zeros((missing, actions.shape[1]), dtype=np.float32)])
    return obs, actions, np.where(obs[:, -1] == 1, 1.0 / subsample_frequency, 1.0).astype(np.float32)


def discriminator_inputs(obs, actions, action_scale, action_bias):
    """(s with its absorbing indicator, a rescaled to [-1, 1] and clipped there as the env clips what it executes);
    the absorbing state's action is 0."""
    live = 1 - obs[:, -1:]
    return torch.cat([obs, ((actions - action_bias) / action_scale).clamp(-1, 1) * live], -1)


def discriminator_loss(agent_logits, expert_logits, expert_weights=None):
    """Logistic regression, agent (label 1) vs expert (label 0): -E_q[log sigma(l)] - E_p[w log(1 - sigma(l))], whose
    optimum for balanced batches is l = log q_t/p. Expert absorbing rows weigh 1/subsample_frequency (DAC); all others
    weigh 1, not the paper's (1-gamma) gamma^t of a discounted occupancy (O-NAIL weighs its expert steps so)."""
    agent_term = F.binary_cross_entropy_with_logits(agent_logits, torch.ones_like(agent_logits))
    expert_term = F.binary_cross_entropy_with_logits(expert_logits, torch.zeros_like(expert_logits), weight=expert_weights)
    return agent_term + expert_term


def gradient_penalty(discriminator, agent_inputs, expert_inputs):
    """E[(||grad_x logit(x_hat)||_2 - 1)^2] at x_hat = eps x_expert + (1 - eps) x_agent, eps ~ U[0, 1] per pair
    (WGAN-GP Eq. 3, as DAC puts it on its discriminator's logit): keeps the logit smooth between the two data sets."""
    eps = torch.rand(len(expert_inputs), 1, device=expert_inputs.device)
    mixed = (eps * expert_inputs + (1 - eps) * agent_inputs).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    return ((grad.norm(2, dim=-1) - 1) ** 2).mean()


def update_discriminator(
    discriminator, optimizer, rb, epoch_rows, expert_inputs, expert_weights, action_scale, action_bias, args
):
    """The end of iteration t: r~ = q_t/p by `discriminator_loss` (+ the gradient penalty), --discriminator-updates-per-step
    minibatches per epoch step, the agent's from the epoch's `epoch_rows` last replay rows only (q_t: all collected by
    pi~; older rows come from earlier policies), the expert's from the demos. Returns the last minibatch's statistics."""
    for _ in range(max(1, round(args.discriminator_updates_per_step * args.epoch_steps))):
        agent_obs, agent_actions, _ = rb.sample(args.discriminator_batch_size, recent=epoch_rows)
        agent_inputs = discriminator_inputs(agent_obs, agent_actions, action_scale, action_bias)
        index = torch.randint(0, len(expert_inputs), (args.discriminator_batch_size,), device=expert_inputs.device)
        agent_logits, expert_logits = discriminator(agent_inputs), discriminator(expert_inputs[index])
        d_loss = discriminator_loss(agent_logits, expert_logits, expert_weights[index])
        penalty = (
            gradient_penalty(discriminator, agent_inputs, expert_inputs[index])
            if args.gradient_penalty
            else torch.zeros((), device=expert_inputs.device)
        )
        optimizer.zero_grad(set_to_none=True)
        (d_loss + args.gradient_penalty * penalty).backward()
        optimizer.step()
    accuracy = 0.5 * ((agent_logits > 0).float().mean() + (expert_logits < 0).float().mean())
    return {
        "losses/discriminator_loss": d_loss.detach(),
        "losses/gradient_penalty": penalty.detach(),
        "charts/discriminator_accuracy": accuracy,
        "charts/agent_log_ratio": agent_logits.detach().mean(),
        "charts/expert_log_ratio": expert_logits.detach().mean(),
    }


def reference_log_prob(actor, obs, u, log_prob_min):
    """log pi~(a|s) under a tanh-Gaussian actor, at a = tanh(u) * scale + bias given by its pre-tanh value u (the
    current policy's own sample), clipped below at log_prob_min per action dimension. Eq. 21 at u as in
    `Actor.get_action`, so the tanh term is the very one of log pi(a|s) and cancels exactly in log pi - log pi~, value
    and gradient: recovering u as atanh of the float32 action would cap |u| near 7.25 and cut the gradient there."""
    mean, log_std = actor(obs)
    log_prob = -0.5 * ((u - mean) * torch.exp(-log_std)).square() - log_std - 2 * (np.log(2) - u - F.softplus(-2 * u))
    return (log_prob.sum(-1) - actor.log_prob_offset).clamp(min=log_prob_min * u.shape[-1])


def log_ratio_reward(log_ratio):
    """r(s, a) = -log r~(s, a) = log p(s,a)/q_t(s,a) (AIRL's / DAC's log D - log(1 - D)); NAIL's r_t without its log pi~
    term, which enters the soft value as the KL to pi~ instead (see the docstring)."""
    return -log_ratio


# --------------------------------------- the SAC block (of sac.py; NAIL's KL term in soft_q_loss and policy_loss)
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
        """a = tanh(u) * scale + bias with u = mean + std * eps, eps ~ N(0, I) (reparameterised); log pi(a|s) by Eq. 21;
        and u itself, at which NAIL scores pi~ (`reference_log_prob`)."""
        mean, log_std = self(obs)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        # log N(u; mean, std) - log(1 - tanh(u)^2), the latter as 2 (log 2 - u - softplus(-2u)): exact where tanh saturates
        log_prob = -0.5 * eps.square() - log_std - 2 * (np.log(2) - u - F.softplus(-2 * u))
        return torch.tanh(u) * self.action_scale + self.action_bias, log_prob.sum(-1) - self.log_prob_offset, u

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
    """Transitions as rows [obs, action, next_obs] of one preallocated tensor on the training device: a minibatch is one
    index gather. Checkpoints leave it out (hundreds of MB); --resume refills it. Observations carry DAC's absorbing
    indicator as their last feature; no rewards: NAIL's reward is a function of the current discriminator and reference
    policy, recomputed on every sampled minibatch."""

    def __init__(self, obs_dim, action_dim, size, device):
        self.widths = (obs_dim, action_dim, obs_dim)
        self.rows = torch.zeros(size, sum(self.widths), device=device)
        self.size, self.pos, self.full = size, 0, False

    def add(self, obs, action, next_obs):
        row = np.concatenate([np.ravel(obs), np.ravel(action), np.ravel(next_obs)])
        self.rows[self.pos] = torch.from_numpy(row.astype(np.float32))
        self.pos = (self.pos + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, batch_size, recent=None):
        """Uniform over the buffer, or over its `recent` last rows (one epoch: samples of q_t only)."""
        filled = self.size if self.full else self.pos
        if recent is None:
            index = torch.randint(0, filled, (batch_size,), device=self.rows.device)
        else:
            index = (self.pos - 1 - torch.randint(0, min(recent, filled), (batch_size,), device=self.rows.device)) % self.size
        return self.rows[index].split(self.widths, -1)


def soft_q_loss(qf, qf_target, actor, batch, alpha, gamma, log_pi_reference):
    """Eq. 5-6 with NAIL's reference and DAC's absorbing state: (Q_k(s,a) - [r + gamma (min_k Q'_k(s', a')
    - alpha (log pi(a'|s') - log pi~(a'|s')))])^2, a' ~ pi(s') in a real s' (log pi~ = 0: plain SAC); a' = 0 and no
    entropy or KL in s_a, whose value is bootstrapped like any other (no (1 - d)). log pi~ is only ever evaluated at
    actions of the current policy (given by their pre-tanh samples u), never at the replay buffer's old ones."""
    obs, actions, rewards, next_obs, next_absorbing = batch
    with torch.no_grad():
        next_actions, next_log_pi, next_u = actor.get_action(next_obs[:, :-1])
        live = 1 - next_absorbing
        next_log_ratio_to_reference = next_log_pi - log_pi_reference(next_obs[:, :-1], next_u)
        min_q_next = (
            qf_target(next_obs, next_actions * live[:, None]).min(0).values - alpha * live * next_log_ratio_to_reference
        )
        q_target = rewards + gamma * min_q_next
    q_values = qf(obs, actions)
    # sum over the critics: each critic gets the full MSE gradient, as with separate losses
    return F.mse_loss(q_values, q_target.expand_as(q_values), reduction="none").mean(1).sum(), q_values


def policy_loss(actor, qf, obs, alpha, log_pi_reference):
    """Eq. 7 with NAIL's reference: E_s E_{a~pi}[alpha (log pi(a|s) - log pi~(a|s)) - min_k Q_k(s, a)] through the
    reparameterised a (pi~'s weights frozen), i.e. KL(pi || pi~) in place of SAC's negative entropy (log pi~ = 0: plain
    SAC), over real states only (DAC: no actor update in the absorbing state, where the action is fixed)."""
    actions, log_pi, u = actor.get_action(obs[:, :-1])
    live = 1 - obs[:, -1]
    log_ratio_to_reference = log_pi - log_pi_reference(obs[:, :-1], u)
    loss = ((alpha * log_ratio_to_reference - qf(obs, actions).min(0).values) * live).sum() / live.sum().clamp(min=1)
    return loss, log_pi, log_ratio_to_reference, live


def alpha_loss(log_alpha, log_pi, target_entropy, live):
    """Eq. 18: -alpha (log pi(a|s) + H_target), so alpha grows when the entropy drops below the target."""
    return (-log_alpha.exp() * (log_pi.detach() + target_entropy) * live).sum() / live.sum().clamp(min=1)


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
    log_pi_reference,
    bf16=False,
):
    """One SAC step: critics every call, actor and alpha policy_frequency times every policy_frequency calls.
    bf16 autocasts the hidden layers' matmuls; weights, optimiser states, targets, log-probs and losses stay float32."""
    device_type = batch[0].device.type
    alpha = log_alpha.exp().detach()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        qf_loss, q_values = soft_q_loss(qf, qf_target, actor, batch, alpha, args.gamma, log_pi_reference)
    q_optimizer.zero_grad(set_to_none=True)
    qf_loss.backward()
    q_optimizer.step()
    stats = {"losses/qf_loss": qf_loss.detach(), "losses/qf1_values": q_values[0].detach().mean()}

    if global_step % args.policy_frequency == 0:
        qf.requires_grad_(False)  # the actor's gradient flows through Q's input only (as Spinning Up freezes Q here)
        for _ in range(args.policy_frequency):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                actor_loss, log_pi, log_ratio_to_reference, live = policy_loss(actor, qf, batch[0], alpha, log_pi_reference)
            actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            actor_optimizer.step()
            if args.autotune:
                loss = alpha_loss(log_alpha, log_pi, target_entropy, live)
                alpha_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                alpha_optimizer.step()
                alpha = log_alpha.exp().detach()
        qf.requires_grad_(True)
        stats.update(
            {
                "losses/actor_loss": actor_loss.detach(),
                "losses/alpha": alpha,
                "charts/entropy": -(log_pi.detach() * live).sum() / live.sum().clamp(min=1),
                "charts/kl_to_reference": (log_ratio_to_reference.detach() * live).sum() / live.sum().clamp(min=1),
            }
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
        "batch_size",
        "buffer_size",
        "epoch_steps",
        "discriminator_batch_size",
        "discriminator_hidden_size",
        "hidden_size",
        "updates_per_step",
    ):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    for name in ("discriminator_updates_per_step", "alpha"):
        if not getattr(args, name) > 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    for name in ("gradient_penalty", "checkpoint_frequency", "checkpoint_minutes", "refill_steps"):
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
            f"error: nail.py needs continuous (Box) actions (its RL algorithm is SAC) but {args.env_id} has "
            f"{env.action_space}."
        )
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    expert_info = load_expert_info(expert_dir, env, required=True)
    expert_obs, expert_actions, expert_weights = expert_transitions(
        expert_dir, env, args.num_expert_trajectories, args.subsample_frequency, args.seed
    )
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
    # pi~, frozen per epoch: no gradient reaches its weights, only through the actions it scores
    reference = Actor(env, args.hidden_size, args.log_std_min, args.log_std_max).to(device).requires_grad_(False)
    qf = SoftQEnsemble(obs_dim + 1, action_dim, args.hidden_size).to(device)
    qf_target = SoftQEnsemble(obs_dim + 1, action_dim, args.hidden_size).to(device)
    qf_target.load_state_dict(qf.state_dict())
    q_optimizer = make_optimizer(qf.parameters(), args.q_lr, device)
    actor_optimizer = make_optimizer(actor.parameters(), args.policy_lr, device)
    target_entropy = -float(action_dim)
    log_alpha = torch.tensor(np.log(args.alpha), dtype=torch.float32, device=device, requires_grad=True)
    alpha_optimizer = make_optimizer([log_alpha], args.q_lr, device)
    rb = ReplayBuffer(obs_dim + 1, action_dim, args.buffer_size, device)
    discriminator = Discriminator(obs_dim + 1 + action_dim, args.discriminator_hidden_size).to(device)
    discriminator_optimizer = make_optimizer(discriminator.parameters(), args.discriminator_lr, device)
    # the state a checkpoint holds, listed once (no replay buffer: --resume refills it)
    saved_state = {
        "actor": actor,
        "qf": qf,
        "qf_target": qf_target,
        "q_optimizer": q_optimizer,
        "actor_optimizer": actor_optimizer,
        "alpha_optimizer": alpha_optimizer,
        "log_alpha": log_alpha,
        "discriminator": discriminator,
        "discriminator_optimizer": discriminator_optimizer,
        "reference": reference,
    }

    scale, bias = actor.action_scale, actor.action_bias
    expert_inputs = discriminator_inputs(
        torch.as_tensor(expert_obs, device=device), torch.as_tensor(expert_actions, device=device), scale, bias
    )
    expert_weights = torch.as_tensor(expert_weights, device=device)
    # the warm-up epochs' reference is the uniform policy: log pi~ = -sum log(high - low) everywhere
    uniform_log_prob = -torch.log(2 * scale).sum()
    # epoch_rows: replay rows (transitions and absorbing self-transitions) collected by the current pi~
    reference_is_uniform, num_updates, num_epochs, epoch_rows = True, 0, 0, 0

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
        reference_is_uniform, num_updates, num_epochs, epoch_rows = (
            checkpoint[k] for k in ("reference_is_uniform", "num_updates", "num_epochs", "epoch_rows")
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

    def minibatch_rewards(obs, actions):
        """The reward of the current discriminator on a replay minibatch (no_grad: a fixed reward per epoch)."""
        with torch.no_grad():
            return log_ratio_reward(discriminator(discriminator_inputs(obs, actions, scale, bias)))

    def log_pi_reference(obs, u):
        """log pi~(a|s) at the current policy's actions, given by their pre-tanh samples u (NAIL's KL regulariser);
        0 for plain AIL (SAC's entropy)."""
        if args.reward == "ail":
            return torch.zeros((), device=device)
        if reference_is_uniform:
            return uniform_log_prob
        return reference_log_prob(reference, obs, u, args.reference_log_prob_min)

    @torch.no_grad()
    def act_deterministic(obs):
        return actor.deterministic_action(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    @torch.no_grad()
    def act_exploring(obs):
        """The epoch's behaviour policy: pi~ (the uniform policy in the warm-up epochs)."""
        if reference_is_uniform:
            return env.action_space.sample()
        return reference.get_action(torch.as_tensor(obs[None], dtype=torch.float32, device=device))[0][0].cpu().numpy()

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
            reference_is_uniform=reference_is_uniform,
            num_updates=num_updates,
            num_epochs=num_epochs,
            epoch_rows=epoch_rows,
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
        # the buffer was left out of the checkpoint: refill it with the epoch's pi~ (= the actor: updates only run at an
        # epoch's end) before updates continue; its last rows stand in for the epoch_rows the checkpoint counted, all of q_t
        for _ in tqdm(
            range(min(args.refill_steps, args.buffer_size)),
            desc="refilling the replay buffer",
            file=sys.stderr,
            mininterval=2.0,
        ):
            action = act_exploring(obs)
            next_obs, _, terminated, truncated, info = env.step(action)
            for row in zip(*add_absorbing_state(obs[None], action[None].astype(np.float32), next_obs[None], [terminated])):
                rb.add(*row)
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
        action = act_exploring(obs)
        next_obs, _, terminated, truncated, info = env.step(action)  # the env reward is only logged (episode statistics)
        for row in zip(*add_absorbing_state(obs[None], action[None].astype(np.float32), next_obs[None], [terminated])):
            rb.add(*row)
            epoch_rows += 1
        obs = next_obs
        if terminated or truncated:
            log_metrics(
                args.track,
                {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]},
                global_step,
            )
            obs, _ = env.reset()

        if global_step % args.epoch_steps == 0 and global_step >= args.learning_starts:
            # end of iteration t: r~ = q_t/p from this epoch's transitions (all by pi~) against the demos ...
            stats = update_discriminator(
                discriminator, discriminator_optimizer, rb, epoch_rows, expert_inputs, expert_weights, scale, bias, args
            )
            # ... then the max-ent RL step on r_t, SAC on the whole replay buffer with rewards of the frozen D and pi~
            for _ in range(args.epoch_steps * args.updates_per_step):
                num_updates += 1
                batch_obs, batch_actions, batch_next_obs = rb.sample(args.batch_size)
                rewards = minibatch_rewards(batch_obs, batch_actions)
                batch = (batch_obs, batch_actions, rewards, batch_next_obs, batch_next_obs[:, -1])
                stats.update(
                    sac_update(
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
                        num_updates,
                        log_pi_reference,
                        bf16,
                    )
                )
            # iteration t + 1: pi~ <- pi, the auxiliary policy of the next bound (O-NAIL's update_reference)
            reference.load_state_dict(actor.state_dict())
            reference_is_uniform, num_epochs = False, num_epochs + 1
            stats.update({"charts/reward_mean": rewards.mean(), "charts/epoch": torch.tensor(num_epochs)})
            exit_if_non_finite(
                stats.values(),
                f"error: non-finite loss at step {global_step} ({ {k: float(v) for k, v in stats.items()} }); "
                f"lower --q-lr, --policy-lr or --discriminator-lr.",
            )
            sps = (global_step - start_step) / (time.time() - start_time)
            log_metrics(args.track, {**stats, "charts/SPS": sps}, global_step)
        if global_step % args.epoch_steps == 0:
            epoch_rows = 0
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
