"""AIRL: Adversarial Inverse Reinforcement Learning, a discriminator built from a reward and a shaping term, and TRPO.

AIRL (Fu, Luo, Levine 2018, arXiv 1710.11248) trains a discriminator of the form
D(s, a, s') = exp f(s, a, s') / (exp f(s, a, s') + pi(a|s)), f(s, a, s') = g(s, a) + gamma h(s') - h(s) (Sec. 6, Eq. 4),
to tell expert transitions from the policy's, and trains the policy on log D - log(1 - D). At the equilibrium pi = pi_E,
D = 1/2 and f = log pi_E(a|s), the expert's soft advantage (App. A.4); with a state-only g(s) and deterministic dynamics
this pins g to the true state-only reward and h to the optimal soft value V*, each up to a constant (Thm C.1): a reward
disentangled from the dynamics (Sec. 5, Thm 5.1). Map from Alg. 1 to this file:
  line 4 "Collect trajectories by executing pi"  --num-envs gymnasium vector envs, --num-steps steps each per iteration
  line 5 "Train D via logistic regression"       `shaped_reward_f` (Eq. 4) inside `AirlDiscriminator`, `airl_logits`
                                                 (the logit of D is f - log pi(a|s), with log pi(a|s) of the stored
                                                 action under the current policy, detached: `policy_log_prob`, for
                                                 expert and agent samples alike) and `discriminator_loss`, Adam on
                                                 minibatches of the agent's samples of the last --disc-replay-iterations
                                                 iterations (App. D.3) paired with equally many expert samples
  line 6 "r <- log D - log(1 - D)"               `learned_reward` = f - log pi(a|s) from the updated discriminator
                                                 (f - w log pi(a|s) with --entropy-weight w)
  line 7 "Update pi w.r.t. r"                    gail.py's TRPO block: advantages by `gae` (GAE, Schulman et al. 2016,
                                                 arXiv 1506.02438) with a separately trained value function
                                                 (`value_loss`), then `trpo_step` (Schulman et al. 2015, arXiv 1502.05477)
Reward convention: the policy maximises the discounted sum of f - log pi(a|s), which is entropy-regularised RL on the
reward f with entropy weight 1 (App. A.3), the maximum causal entropy objective the method derives from; TRPO adds no
entropy bonus of its own. The paper's continuous-control runs instead add an entropy regulariser of 0.1 to all methods
(App. D.2): `--entropy-weight 0.1` rewards f - 0.1 log pi(a|s), while D's logit keeps f - log pi(a|s). `--state-only`
restricts g to g(s), the disentangled reward of Sec. 5-6; the default g(s, a) is the paper's choice for its imitation
benchmarks (Sec. 7.3: "an unrestricted state-action reward function"). g and h are ReLU nets of 32 units, h with two
hidden layers (App. D.1); g has two as well, as in the released code (justinjfu/inverse_rl), where App. D.1 says
linear (`--reward-hidden-layers 0`). gamma in f is the policy's discount; h(s') is kept after a time-limit
truncation. After a termination the paper's f sets h(s') = 0, the value of an absorbing state with reward 0; since
f - log pi is negative wherever D sees the agent, that makes ending an episode early pay (Hopper falls on purpose).
By default (`--absorbing-state`, off with `--no-absorbing-state`) the absorbing state s_a is learned instead, as DAC
(Kostrikov et al. 2019, arXiv 1809.02925) does for off-policy AIL: s_a carries an indicator feature, D sees its
self-transitions (s_a, 0, s_a), one per terminated episode, on both sides, a termination leads to h(s_a), and GAE
bootstraps a termination with V(s_a) = f(s_a, 0, s_a) / (1 - gamma). g sees a continuous action as the policy
sampled it, rescaled so that the bounds map to [-1, 1] but not clipped: f and pi(a|s) in D are functions of the same
a. As in gail.py: gamma 0.995, lambda 0.97, max KL 0.01, observations standardised with the expert demos' mean and
std for every network, discrete actions one-hot, and gymnasium's next-step autoreset step masked out of every loss
and not counted as an environment step.
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
from collections import deque
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

# the expert arrays this script reads: f needs s' and whether the episode ended there (--log-reward-correlation adds rewards)
DEMO_KEYS = ("observations", "actions", "next_observations", "terminations")


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
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 300_000
    """budget of environment steps: floor(total / (num_envs * num_steps)) iterations run, so the transitions collected
    (autoreset steps left out) never exceed it"""
    eval_frequency: int = 20_000
    """evaluate the deterministic policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 10
    """number of expert demo episodes to imitate (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory"""

    # policy optimisation: TRPO with GAE
    num_envs: int = 8
    """parallel environments (a gymnasium vector env) collecting each iteration's batch"""
    num_steps: int = 256
    """steps per environment per iteration (batch = num_envs * num_steps, less the autoreset steps)"""
    gamma: float = 0.995
    """the discount factor gamma, of the policy's return and of the shaping term gamma h(s') in f"""
    gae_lambda: float = 0.97
    """the lambda of generalized advantage estimation (original GAIL code)"""
    max_kl: float = 0.01
    """TRPO's trust region: the largest mean KL(pi_old || pi_new) over the batch that a step may reach"""
    cg_iterations: int = 10
    """conjugate gradient iterations that solve F x = g for the natural gradient direction"""
    cg_damping: float = 0.1
    """multiple of the identity added to the Fisher matrix (keeps the CG system well conditioned)"""
    fisher_subsample: int = 10
    """Fisher-vector products average over every k-th state of the batch (the original code uses a random 10%)"""
    backtrack_iterations: int = 10
    """line-search steps, each shrinking the step by backtrack_coef, before the update is dropped"""
    backtrack_coef: float = 0.5
    """step shrink factor of the backtracking line search"""
    accept_ratio: float = 0.1
    """a step is accepted if the surrogate improves by at least this fraction of its linear prediction"""
    value_learning_rate: float = 1e-3
    """the learning rate of the value function's Adam optimizer"""
    value_epochs: int = 5
    """passes over each batch fitting the value function to the GAE returns"""
    value_num_minibatches: int = 16
    """minibatches per value-function epoch"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the policy and the value function"""
    normalize_observations: bool = True
    """standardise observations with the expert demos' mean and std (policy, value function, g and h)"""

    # discriminator: f(s, a, s') = g(s, a) + gamma h(s') - h(s), logit f - log pi(a|s)
    state_only: bool = False
    """learn a state-only reward g(s), disentangled from the dynamics (Sec. 5-6); default g(s, a), as the paper's
    imitation benchmarks (Sec. 7.3)"""
    reward_hidden_layers: int = 2
    """ReLU hidden layers of the reward approximator g (the released code's 2; App. D.1's linear g is 0)"""
    shaping_hidden_layers: int = 2
    """ReLU hidden layers of the shaping term h (App. D.1: 2)"""
    disc_hidden_size: int = 32
    """units of each ReLU hidden layer of g and h (App. D.1: 32)"""
    disc_learning_rate: float = 1e-3
    """the learning rate of the discriminator's Adam optimizer (the released code's)"""
    disc_epochs: int = 1
    """passes per iteration, each over as many agent samples as the iteration collected, updating the discriminator"""
    disc_num_minibatches: int = 32
    """minibatches per discriminator epoch, each paired with as many expert samples (drawn with replacement)"""
    disc_replay_iterations: int = 20
    """the agent samples of this many latest iterations are the discriminator's negatives (App. D.3: 20, so that the
    reward does not forget what it told earlier policies; 1: the current batch only)"""
    absorbing_state: bool = True
    """DAC's absorbing states (Kostrikov et al. 2019, arXiv 1809.02925): a termination leads to an absorbing state whose
    reward D learns like any other's, instead of h(s') = 0 and no reward after it; without them, AIRL's reward (negative
    wherever D sees the agent) makes an early termination pay on envs that end episodes on failure (Hopper)"""
    entropy_weight: float = 1.0
    """the weight w of -log pi(a|s) in the policy's reward f - w log pi(a|s): 1 is Alg. 1's log D - log(1 - D); the
    paper's continuous-control runs use an entropy regulariser of 0.1 (App. D.2). D's logit keeps f - log pi(a|s)"""
    log_reward_correlation: bool = False
    """write runs/<run>/reward_correlation.csv, one row per iteration: the Pearson correlation of g, and of the policy's
    reward f - log pi, with the env's own reward on the agent's batch, on the expert demos and on both (a check of the
    recovered reward, which reads the demos' rewards; training never sees the env's reward)"""


# ----------------------------------------------------------------------------------------------------------- AIRL
def reward_inputs(batch, action_space, state_only):
    """The input of g: the standardised s alone (g(s), --state-only), or s next to a one-hot discrete a, or a continuous a
    rescaled so that the action bounds map to [-1, 1]. Unlike gail.py's, not clipped: pi(a|s) in D is the density of the
    policy's raw sample, and clipping would hide from f the out-of-bounds samples that the reward's -log pi(a|s) pays
    for (the policy's std then grows without check)."""
    if state_only:
        return batch["observations"]
    actions = batch["actions"]
    if isinstance(action_space, gym.spaces.Discrete):
        actions = F.one_hot(actions.long(), int(action_space.n)).float()
    else:
        low, high = (
            torch.as_tensor(bound, dtype=torch.float32, device=actions.device)
            for bound in (action_space.low, action_space.high)
        )
        actions = (2 * actions - (high + low)) / (high - low)
    return torch.cat([batch["observations"], actions], -1)


def discriminator_inputs(samples, action_space, state_only, absorbing_state):
    """The inputs of g, of h(s) and of h(s'), and the terminations that zero h(s') in f, added to a dict of transitions.
    With DAC's absorbing states every input gains an indicator feature, 1 at the absorbing state s_a (whose other
    features are 0): a terminated transition leads to s_a, so f keeps gamma h(s_a), and a row with samples["absorbing"]
    = 1 is s_a's self-transition (s_a, 0, s_a) (`absorbing_transitions`). Without them, h(s') = 0 after a termination."""
    inputs = reward_inputs(samples, action_space, state_only)
    if not absorbing_state:
        return {
            **samples,
            "reward_inputs": inputs,
            "shaping_inputs": samples["observations"],
            "next_shaping_inputs": samples["next_observations"],
            "f_terminations": samples["terminations"],
        }
    absorbing = samples["absorbing"][:, None]
    next_absorbing = torch.maximum(samples["terminations"][:, None], absorbing)
    mark = lambda x, indicator: torch.cat([x * (1 - indicator), indicator], -1)
    return {
        **samples,
        "reward_inputs": mark(inputs, absorbing),
        "shaping_inputs": mark(samples["observations"], absorbing),
        "next_shaping_inputs": mark(samples["next_observations"], next_absorbing),
        "f_terminations": torch.zeros_like(samples["terminations"]),
    }


def absorbing_transitions(num, like):
    """num self-transitions (s_a, 0, s_a) of the absorbing state, one per termination (DAC keeps them in the data as
    ordinary transitions), shaped as the dict of transitions `like`, with absorbing = 1."""
    rows = {key: value.new_zeros((num, *value.shape[1:])) for key, value in like.items()}
    rows["absorbing"] = torch.ones(num, device=like["terminations"].device)
    return rows


def bootstrap_absorbing_state(next_values, terminations, absorbing_reward, gamma):
    """GAE's next-state values and terminations with DAC's absorbing state: after a termination the agent stays in s_a
    forever, earning the learned reward r_a of (s_a, 0, s_a) each step (log pi = 0 there), so a terminated step
    bootstraps V(s_a) = r_a / (1 - gamma) instead of 0, and no step counts as terminated in `gae` any longer."""
    next_values = torch.where(terminations.bool(), absorbing_reward / (1 - gamma), next_values)
    return next_values, torch.zeros_like(terminations)


def shaped_reward_f(g, h, h_next, terminations, gamma):
    """Eq. 4: f(s, a, s') = g(s, a) + gamma h(s') - h(s), on [B] tensors. After a termination s' is absorbing, with value
    0 unless its reward is learned (--absorbing-state), so h(s') = 0 there (h recovers V*, Thm C.1); a time-limit
    truncation is not a termination and keeps h(s')."""
    return g + gamma * (1.0 - terminations) * h_next - h


def airl_logits(f, log_pi):
    """The logit of D(s, a, s') = exp f / (exp f + pi(a|s)) (Sec. 6; App. A Eq. 7): log D - log(1 - D) = f - log pi(a|s).
    D = sigmoid(logit) is the probability that a transition came from the expert."""
    return f - log_pi


def discriminator_loss(expert_logits, agent_logits):
    """Alg. 1 line 5, the loss L of App. A.1: binary logistic regression with expert label 1 and agent label 0,
    -E_expert[log D] - E_agent[log(1 - D)], each side averaged on its own."""
    expert_term = F.binary_cross_entropy_with_logits(expert_logits, torch.ones_like(expert_logits))
    agent_term = F.binary_cross_entropy_with_logits(agent_logits, torch.zeros_like(agent_logits))
    return expert_term + agent_term


def learned_reward(logits, log_pi, entropy_weight):
    """Alg. 1 line 6, App. A.3: r(s, a, s') = log D - log(1 - D) = f - log pi(a|s), whose sum along a trajectory is the
    entropy-regularised return of the reward f (entropy weight 1); an entropy_weight w != 1 gives f - w log pi(a|s)."""
    return F.logsigmoid(logits) - F.logsigmoid(-logits) + (1.0 - entropy_weight) * log_pi


def relu_mlp(in_dim, hidden_size, num_layers):
    """A scalar function: num_layers ReLU layers of hidden_size units, then a linear output (num_layers 0: linear)."""
    layers, width = [], in_dim
    for _ in range(num_layers):
        layers += [layer_init(nn.Linear(width, hidden_size)), nn.ReLU()]
        width = hidden_size
    # a small output layer: f starts near 0, so D starts near pi(a|s)'s verdict alone
    return nn.Sequential(*layers, layer_init(nn.Linear(width, 1), std=0.01))


class AirlDiscriminator(nn.Module):
    """f_{theta,phi}(s, a, s') of Eq. 4 from the reward approximator g_theta and the shaping term h_phi (ReLU nets,
    App. D.1), on `discriminator_inputs`."""

    def __init__(self, reward_in_dim, obs_dim, hidden_size, reward_layers, shaping_layers):
        super().__init__()
        self.g = relu_mlp(reward_in_dim, hidden_size, reward_layers)
        self.h = relu_mlp(obs_dim, hidden_size, shaping_layers)

    def forward(self, samples, gamma):
        """f [B] of a dict of `discriminator_inputs`."""
        g = self.g(samples["reward_inputs"]).squeeze(-1)
        h, h_next = self.h(samples["shaping_inputs"]).squeeze(-1), self.h(samples["next_shaping_inputs"]).squeeze(-1)
        return shaped_reward_f(g, h, h_next, samples["f_terminations"], gamma)


@torch.no_grad()
def policy_log_prob(policy, samples):
    """log pi(a|s) of the stored actions under the policy as it is now, without gradient: the pi(a|s) that D's formula
    takes as given (App. A: only f is trained), the same for expert and agent samples; 0 at the absorbing state, whose
    single action the policy does not choose."""
    log_pi = policy.distribution(policy(samples["observations"])).log_prob(samples["actions"])
    return log_pi * (1 - samples["absorbing"]) if "absorbing" in samples else log_pi


def pearson_correlation(x, y):
    """Pearson correlation of two [B] tensors (NaN where either is constant)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float((x @ y) / (x.norm() * y.norm()))


def write_reward_correlation_row(run_dir, row):
    """Append one iteration's correlations to reward_correlation.csv (--log-reward-correlation), flushed at once."""
    path = Path(run_dir) / "reward_correlation.csv"
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(f"{value:.6g}" if isinstance(value, float) else str(value) for value in row.values()) + "\n")


# ------------------------------------------------------------------------------------ the TRPO block (of gail.py)
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


def conjugate_gradient(matrix_vector_product, b, iterations, residual_tol=1e-10):
    """Solves A x = b for a symmetric positive-definite A known only through x -> A x, from x = 0 (TRPO Appendix C;
    Nocedal & Wright 2006, Alg. 5.2); `iterations` steps, or fewer once ||r||^2 < residual_tol."""
    x = torch.zeros_like(b)
    residual, direction = b.clone(), b.clone()
    residual_norm = residual @ residual
    for _ in range(iterations):
        if residual_norm < residual_tol:  # also b = 0 (no gradient), where alpha would be 0 / 0
            break
        product = matrix_vector_product(direction)
        alpha = residual_norm / (direction @ product)
        x += alpha * direction
        residual -= alpha * product
        new_residual_norm = residual @ residual
        direction = residual + (new_residual_norm / residual_norm) * direction
        residual_norm = new_residual_norm
    return x


def fisher_vector_product(policy, obs, vector, damping):
    """(F + damping I) v, F the Hessian of the mean KL(pi_old(.|s) || pi_theta(.|s)) at theta = theta_old, which is the
    Fisher information matrix of the policy (TRPO Sec. 6 and Appendix C): two backward passes, F never formed."""
    params = list(policy.parameters())
    dist_params = policy(obs)
    kl = torch.distributions.kl_divergence(policy.distribution(dist_params.detach()), policy.distribution(dist_params)).mean()
    grads = torch.autograd.grad(kl, params, create_graph=True)
    grad_vector = torch.cat([grad.reshape(-1) for grad in grads]) @ vector
    products = torch.autograd.grad(grad_vector, params)
    return torch.cat([product.reshape(-1) for product in products]) + damping * vector


def trpo_step(
    policy,
    obs,
    actions,
    advantages,
    max_kl,
    damping,
    cg_iterations,
    backtrack_iterations,
    backtrack_coef,
    accept_ratio,
    fisher_subsample=1,
):
    """One TRPO update of the policy in place (Schulman et al. 2015, Eq. 14 and Appendix C): maximise the surrogate
    L(theta) = mean[pi_theta(a|s) / pi_old(a|s) A] subject to mean KL(pi_old || pi_theta) <= max_kl. The natural
    gradient direction s = F^-1 g comes from `conjugate_gradient`; the full step beta s with beta = sqrt(2 max_kl /
    s^T F s) reaches the KL bound under the quadratic model; the backtracking line search then shrinks it until the
    measured KL is <= max_kl and the surrogate improves by at least accept_ratio of its linear prediction. If no step
    passes, the policy is left unchanged. F is estimated on every fisher_subsample-th state only (an average over
    states, cheap to estimate well); KL and surrogate are measured on the whole batch. Returns the measured KL, the
    surrogate's improvement and the number of backtracks."""
    params = list(policy.parameters())
    with torch.no_grad():
        old_params = policy(obs)
        old_log_prob = policy.distribution(old_params).log_prob(actions)

    def surrogate_and_kl():
        dist = policy.distribution(policy(obs))
        surrogate = (torch.exp(dist.log_prob(actions) - old_log_prob) * advantages).mean()
        return surrogate, torch.distributions.kl_divergence(policy.distribution(old_params), dist).mean()

    surrogate, _ = surrogate_and_kl()
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(surrogate, params)])
    fisher_obs = obs[::fisher_subsample]
    direction = conjugate_gradient(lambda v: fisher_vector_product(policy, fisher_obs, v, damping), grad, cg_iterations)
    full_step = direction * torch.sqrt(
        2 * max_kl / (direction @ fisher_vector_product(policy, fisher_obs, direction, damping) + 1e-8)
    )
    expected_improvement = grad @ full_step
    theta_old = nn.utils.parameters_to_vector(params).detach().clone()
    with torch.no_grad():
        for backtracks in range(backtrack_iterations):
            fraction = backtrack_coef**backtracks
            nn.utils.vector_to_parameters(theta_old + fraction * full_step, params)
            new_surrogate, kl = surrogate_and_kl()
            improvement = new_surrogate - surrogate.detach()
            # expected_improvement = g^T F^-1 g beta > 0, so an accepted step always improves the surrogate
            if kl <= max_kl and improvement > accept_ratio * fraction * expected_improvement:
                return {"kl": kl, "surrogate_improvement": improvement, "backtracks": torch.tensor(float(backtracks))}
        nn.utils.vector_to_parameters(theta_old, params)
    zero = torch.zeros((), device=grad.device)
    return {"kl": zero, "surrogate_improvement": zero, "backtracks": torch.tensor(float(backtrack_iterations))}


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
        "fisher_subsample",
        "value_epochs",
        "value_num_minibatches",
        "disc_epochs",
        "disc_num_minibatches",
        "hidden_size",
        "disc_hidden_size",
        "disc_replay_iterations",
    ):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.reward_hidden_layers < 0 or args.shaping_hidden_layers < 0:
        sys.exit(
            f"error: --reward-hidden-layers and --shaping-hidden-layers must be >= 0, got {args.reward_hidden_layers} "
            f"and {args.shaping_hidden_layers}."
        )
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
    if not isinstance(eval_env.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        sys.exit(
            f"error: {Path(__file__).name} supports Discrete and Box actions, but {args.env_id} has {eval_env.action_space}; "
            f"pick another env."
        )
    if args.num_steps < 2 or args.max_kl <= 0:
        # with 2 steps or more every env contributes a transition: only the step after an episode's end carries none
        sys.exit(f"error: --num-steps must be >= 2 and --max-kl > 0, got {args.num_steps} and {args.max_kl}.")
    if args.total_timesteps < args.num_envs * args.num_steps:
        sys.exit(
            f"error: --total-timesteps {args.total_timesteps} is less than one iteration of --num-envs {args.num_envs} x "
            f"--num-steps {args.num_steps} = {args.num_envs * args.num_steps} steps; pass at least that, or lower either."
        )
    expert_info = load_expert_info(expert_dir, eval_env, required=True)
    demo_keys = DEMO_KEYS + (("rewards",) if args.log_reward_correlation else ())
    demos = load_demos(expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, demo_keys)
    discrete = isinstance(eval_env.action_space, gym.spaces.Discrete)
    for key, value in demos.items():
        valid = (
            np.isin(value, np.arange(eval_env.action_space.n))
            if key == "actions" and discrete
            else np.isin(value, (0, 1))
            if key == "terminations"
            else np.isfinite(value)
        )
        if not valid.all():
            sys.exit(
                f"error: {expert_dir / 'demos.npz'} holds invalid {key} (non-finite, discrete actions outside the action "
                f"space, or terminations other than 0/1); regenerate it with "
                f"`{expert_command(args.env_id, expert_dir)} --overwrite`."
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
    expert = {
        key: torch.as_tensor(value, dtype=torch.long if key == "actions" and discrete else torch.float32, device=device)
        for key, value in demos.items()
    }
    expert_env_rewards = expert.pop("rewards", None)  # --log-reward-correlation only: never seen by training
    if args.normalize_observations:
        # +1e-3 keeps near-constant observation dims (e.g. a pole the expert holds still) from blowing up, as TD3+BC does
        obs_mean, obs_std = expert["observations"].flatten(1).mean(0), expert["observations"].flatten(1).std(0) + 1e-3
    else:
        obs_mean, obs_std = (
            torch.zeros_like(expert["observations"][0]).flatten(),
            torch.ones_like(expert["observations"][0]).flatten(),
        )

    def normalize(obs):
        return (torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1) - obs_mean) / obs_std

    for key in ("observations", "next_observations"):
        if key in expert:
            expert[key] = normalize(expert[key])
    expert["absorbing"] = torch.zeros(len(expert["observations"]), device=device)
    if args.absorbing_state:
        # one absorbing transition per terminated demo episode, kept whatever subsampling dropped (as DAC)
        full_demos = load_demos(expert_dir, eval_env, args.num_expert_trajectories, 1, args.seed, ("terminations",))
        absorbing_rows = absorbing_transitions(int(full_demos["terminations"].sum()), expert)
        expert = {key: torch.cat([value, absorbing_rows[key]]) for key, value in expert.items()}
    expert = discriminator_inputs(expert, action_space, args.state_only, args.absorbing_state)

    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = Policy(obs_dim, action_space, args.hidden_size).to(device)
    value_network = mlp(obs_dim, 1, args.hidden_size, out_std=1.0).to(device)
    value_optimizer = torch.optim.Adam(value_network.parameters(), lr=args.value_learning_rate)
    discriminator = AirlDiscriminator(
        expert["reward_inputs"].shape[1],
        expert["shaping_inputs"].shape[1],
        args.disc_hidden_size,
        args.reward_hidden_layers,
        args.shaping_hidden_layers,
    ).to(device)
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.disc_learning_rate)
    if not discrete:
        low, high = action_space.low, action_space.high
    eval_rows = []
    replay = deque(maxlen=args.disc_replay_iterations)  # App. D.3: the agent samples of the latest iterations

    # rollout storage, [num_steps, num_envs, ...] on the training device
    shape = (args.num_steps, args.num_envs)
    b_obs = torch.zeros(*shape, obs_dim, device=device)
    b_next_obs = torch.zeros(*shape, obs_dim, device=device)
    b_actions = torch.zeros(shape + action_space.shape, dtype=torch.long if discrete else torch.float32, device=device)
    b_terminations, b_dones, b_valid, b_env_rewards = (torch.zeros(shape, device=device) for _ in range(4))

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

    start_time = time.time()
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
        # Alg. 1 line 4: collect trajectories by executing pi
        episode_returns = []
        for step in range(args.num_steps):
            obs_t = normalize(obs)
            with torch.no_grad():
                action = policy.distribution(policy(obs_t)).sample()
            action_np = action.cpu().numpy()
            # the Gaussian's sample is clipped for the env only; TRPO's likelihood ratio and log pi in D stay the sample's
            next_obs, env_reward, terminated, truncated, infos = envs.step(
                action_np if discrete else np.clip(action_np, low, high)
            )
            b_obs[step], b_next_obs[step], b_actions[step] = obs_t, normalize(next_obs), action
            b_terminations[step] = torch.as_tensor(terminated, dtype=torch.float32, device=device)
            b_dones[step] = torch.as_tensor(terminated | truncated, dtype=torch.float32, device=device)
            b_valid[step] = torch.as_tensor(valid, dtype=torch.float32, device=device)
            b_env_rewards[step] = torch.as_tensor(env_reward, dtype=torch.float32, device=device)
            if "episode" in infos:
                episode_returns.extend(infos["episode"]["r"][infos["_episode"]])
            valid = ~(terminated | truncated)
            obs = next_obs
        mask = b_valid.bool()
        batch = {
            "observations": b_obs[mask],
            "actions": b_actions[mask],
            "next_observations": b_next_obs[mask],
            "terminations": b_terminations[mask],
            "absorbing": torch.zeros(int(mask.sum()), device=device),
        }
        num_absorbing = int(batch["terminations"].sum()) if args.absorbing_state else 0
        absorbing_rows = absorbing_transitions(num_absorbing, batch)
        replay.append(
            discriminator_inputs(
                {key: torch.cat([value, absorbing_rows[key]]) for key, value in batch.items()},
                action_space,
                args.state_only,
                args.absorbing_state,
            )
        )
        batch = discriminator_inputs(batch, action_space, args.state_only, args.absorbing_state)
        negatives = {key: torch.cat([old[key] for old in replay]) for key in batch}

        # Alg. 1 line 5: logistic regression, expert samples against the agent's of the latest iterations (App. D.3),
        # each side's log pi(a|s) from the policy as it is now (the one that collected this batch)
        for _ in range(args.disc_epochs):
            # as many negatives per epoch as this iteration collected, drawn without replacement from the replayed ones
            draw = torch.randperm(len(negatives["observations"]), device=device)[: len(batch["observations"])]
            for index in draw.chunk(args.disc_num_minibatches):
                expert_index = torch.randint(len(expert["observations"]), (len(index),), device=device)
                expert_batch = {key: value[expert_index] for key, value in expert.items()}
                agent_batch = {key: value[index] for key, value in negatives.items()}
                expert_logits = airl_logits(discriminator(expert_batch, args.gamma), policy_log_prob(policy, expert_batch))
                agent_logits = airl_logits(discriminator(agent_batch, args.gamma), policy_log_prob(policy, agent_batch))
                disc_loss = discriminator_loss(expert_logits, agent_logits)
                disc_optimizer.zero_grad(set_to_none=True)
                disc_loss.backward()
                disc_optimizer.step()

        # Alg. 1 lines 6-7: a TRPO step on r = log D - log(1 - D) = f - log pi of the updated discriminator, GAE advantages
        with torch.no_grad():
            agent_log_pi = policy_log_prob(policy, batch)
            agent_logits = airl_logits(discriminator(batch, args.gamma), agent_log_pi)
            expert_logits = airl_logits(discriminator(expert, args.gamma), policy_log_prob(policy, expert))
            rewards = torch.zeros(shape, device=device)
            rewards[mask] = learned_reward(agent_logits, agent_log_pi, args.entropy_weight)
            values, next_values = value_network(b_obs).squeeze(-1), value_network(b_next_obs).squeeze(-1)
            terminations = b_terminations
            if args.absorbing_state:
                absorbing_sample = discriminator_inputs(
                    absorbing_transitions(1, absorbing_rows),
                    action_space,
                    args.state_only,
                    args.absorbing_state,
                )
                absorbing_reward = learned_reward(discriminator(absorbing_sample, args.gamma), 0.0, args.entropy_weight)
                next_values, terminations = bootstrap_absorbing_state(
                    next_values, b_terminations, absorbing_reward, args.gamma
                )
            advantages = gae(rewards, values, next_values, terminations, b_dones, args.gamma, args.gae_lambda)
            returns = (advantages + values)[mask]
            advantages = advantages[mask]
            # standardised per batch, as the original code does: TRPO's step size is set by the KL bound anyway
            advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)
            if args.log_reward_correlation:
                g_agent, g_expert = (discriminator.g(samples["reward_inputs"]).squeeze(-1) for samples in (batch, expert))
                g_expert = g_expert[expert["absorbing"] == 0]  # the env has no reward for s_a
                env_rewards = b_env_rewards[mask]
                g_all, env_rewards_all = torch.cat([g_agent, g_expert]), torch.cat([env_rewards, expert_env_rewards])
                correlations = {
                    "g_agent": pearson_correlation(g_agent, env_rewards),
                    "g_expert": pearson_correlation(g_expert, expert_env_rewards),
                    "g_all": pearson_correlation(g_all, env_rewards_all),
                    "reward_agent": pearson_correlation(rewards[mask], env_rewards),
                }
        stats = trpo_step(
            policy,
            batch["observations"],
            batch["actions"],
            advantages,
            args.max_kl,
            args.cg_damping,
            args.cg_iterations,
            args.backtrack_iterations,
            args.backtrack_coef,
            args.accept_ratio,
            args.fisher_subsample,
        )
        stats = {f"charts/{key}": value for key, value in stats.items()}
        for _ in range(args.value_epochs):
            for index in torch.randperm(len(returns), device=device).chunk(args.value_num_minibatches):
                v_loss = value_loss(value_network(batch["observations"][index]).squeeze(-1), returns[index])
                value_optimizer.zero_grad(set_to_none=True)
                v_loss.backward()
                value_optimizer.step()

        with torch.no_grad():
            stats.update(
                {
                    "losses/discriminator_loss": disc_loss.detach(),
                    "losses/value_loss": v_loss.detach(),
                    "charts/disc_accuracy_expert": (expert_logits > 0).float().mean(),
                    "charts/disc_accuracy_agent": (agent_logits < 0).float().mean(),
                    "charts/learned_reward": rewards[mask].mean(),
                    "charts/g_expert": discriminator.g(expert["reward_inputs"]).mean(),
                    "charts/g_agent": discriminator.g(batch["reward_inputs"]).mean(),
                    "charts/entropy": policy.distribution(policy(batch["observations"])).entropy().mean(),
                }
            )
        exit_if_non_finite(
            stats.values(),
            f"error: non-finite training statistics at iteration {iteration} "
            f"({ {k: float(v) for k, v in stats.items()} }); "
            f"lower --disc-learning-rate or --value-learning-rate.",
        )
        num_steps = int(mask.sum())
        global_step += num_steps
        progress.update(num_steps)
        if args.log_reward_correlation:
            write_reward_correlation_row(run_dir, {"global_step": global_step, **correlations})
        log = {**stats, "charts/SPS": global_step / (time.time() - start_time)}
        if episode_returns:
            log["charts/episodic_return"] = np.mean(episode_returns)
        if args.log_reward_correlation:
            log.update({f"charts/reward_correlation_{key}": value for key, value in correlations.items()})
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
    if args.log_reward_correlation:
        print(
            f"{run_name}: Pearson correlation of g with the env's reward on the expert demos and the last batch: "
            f"{correlations['g_all']:.3f} (per iteration in {run_dir / 'reward_correlation.csv'})"
        )
    envs.close()
    eval_env.close()
    if args.track:
        wandb.finish()
