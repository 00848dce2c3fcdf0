"""AIRL: Adversarial Inverse Reinforcement Learning, a discriminator built from a reward and a shaping term, and TRPO.

AIRL (Fu, Luo, Levine 2018, arXiv 1710.11248) trains a discriminator D(s, a, s') = exp f / (exp f + pi(a|s)) with
f(s, a, s') = g(s, a) + gamma h(s') - h(s) (Sec. 6, Eq. 4) to tell expert transitions from the policy's, and trains the
policy on log D - log(1 - D) = f - log pi(a|s): entropy-regularised RL on the reward f (App. A.3). At the equilibrium
pi = pi_E, f = log pi_E(a|s); with a state-only g(s) (`--state-only`) and deterministic dynamics, g recovers the true
reward and h the soft value V*, each up to a constant (Thm C.1): a reward disentangled from the dynamics (Sec. 5).
Map from Alg. 1 to this file:
  line 4 "Collect trajectories by executing pi"  --num-envs gymnasium vector envs, --num-steps steps each per iteration
  line 5 "Train D via logistic regression"       `update_discriminator`: `shaped_reward_f` in `AirlDiscriminator`,
                                                 `airl_logits` with `policy_log_prob` (detached), `discriminator_loss`,
                                                 against the agent's samples of --disc-replay-iterations (App. D.3)
  line 6 "r <- log D - log(1 - D)"               `learned_reward` (f - w log pi(a|s) with --entropy-weight w)
  line 7 "Update pi w.r.t. r"                    gail.py's TRPO block: `gae`, `value_loss`, `trpo_step`
After a termination the paper's f sets h(s') = 0, an absorbing state of reward 0; since f - log pi is negative wherever
D sees the agent, ending an episode early then pays (Hopper falls on purpose). By default (`--absorbing-state`) the
absorbing state s_a is learned instead, as DAC does (Kostrikov et al. 2019, arXiv 1809.02925): see
`discriminator_inputs` and `bootstrap_absorbing_state`. g and h are ReLU nets of 32 units with two hidden layers
(App. D.1; g as in the released code, justinjfu/inverse_rl, where App. D.1 says linear: `--reward-hidden-layers 0`).
gamma in f is the policy's discount. As in gail.py: gamma 0.995, lambda 0.97, max KL 0.01, observations standardised
with the expert demos' mean and std, discrete actions one-hot, and gymnasium's next-step autoreset step masked out.
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
    """budget of environment steps: total // (num_envs * num_steps) iterations run (autoreset steps are not counted)"""
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
    any_env: bool = False
    """use an expert folder recorded on another env id (e.g. Hopper-v4 demos for Hopper-v5) when its shapes fit"""

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
    """learn a state-only reward g(s), disentangled from the dynamics (Sec. 5-6); default g(s, a), as in Sec. 7.3"""
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
    """the agent samples of this many latest iterations are D's negatives (App. D.3: 20; 1: the current batch only)"""
    absorbing_state: bool = True
    """DAC's absorbing state: a termination leads to s_a, whose reward D learns, instead of h(s') = 0 and no reward after"""
    entropy_weight: float = 1.0
    """w in the policy's reward f - w log pi(a|s): 1 is Alg. 1's log D - log(1 - D), 0.1 the paper's MuJoCo runs' (App. D.2)"""
    log_reward_correlation: bool = False
    """write runs/<run>/reward_correlation.csv: per iteration, the correlations of g and of the reward with the env's own"""


# ----------------------------------------------------------------------------------------------------------- AIRL
def reward_inputs(batch, action_space, state_only):
    """The input of g: the standardised s alone (--state-only), or s next to a one-hot discrete a, or a continuous a
    rescaled so that the bounds map to [-1, 1], not clipped (unlike gail.py's): pi(a|s) in D is the density of the raw
    sample, and clipping would hide from f the out-of-bounds samples that the reward's -log pi(a|s) pays for."""
    if state_only:
        return batch["observations"]
    actions = batch["actions"]
    if isinstance(action_space, gym.spaces.Discrete):
        actions = F.one_hot(actions.long(), int(action_space.n)).float()
    else:
        low, high = actions.new_tensor(action_space.low), actions.new_tensor(action_space.high)
        actions = (2 * actions - (high + low)) / (high - low)
    return torch.cat([batch["observations"], actions], -1)


def discriminator_inputs(samples, action_space, state_only, absorbing_state):
    """The inputs of g, of h(s) and of h(s'), and the terminations that zero h(s') in f, added to a dict of transitions.
    With DAC's absorbing states every input gains an indicator feature, 1 at the absorbing state s_a (whose other
    features are 0): a terminated transition leads to s_a, so f keeps gamma h(s_a), and a row with samples["absorbing"]
    = 1 is s_a's self-transition (s_a, 0, s_a) (`absorbing_transitions`). Without them, h(s') = 0 after a termination."""
    absorbing = samples.get("absorbing", torch.zeros_like(samples["terminations"]))[:, None]
    next_absorbing = torch.maximum(samples["terminations"][:, None], absorbing)
    mark = (lambda x, indicator: torch.cat([x * (1 - indicator), indicator], -1)) if absorbing_state else (lambda x, _: x)
    return {
        **samples,
        "reward_inputs": mark(reward_inputs(samples, action_space, state_only), absorbing),
        "shaping_inputs": mark(samples["observations"], absorbing),
        "next_shaping_inputs": mark(samples["next_observations"], next_absorbing),
        "f_terminations": torch.zeros_like(samples["terminations"]) if absorbing_state else samples["terminations"],
    }


def absorbing_transitions(num, like):
    """num self-transitions (s_a, 0, s_a) of the absorbing state, one per termination (DAC keeps them as ordinary
    transitions), shaped as the dict of transitions `like`, with absorbing = 1."""
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
    """Eq. 4: f(s, a, s') = g(s, a) + gamma h(s') - h(s), on [B] tensors; h(s') = 0 after a termination (an absorbing
    state of value 0, unless --absorbing-state learns it), not after a time-limit truncation."""
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
    return nn.Sequential(*layers, layer_init(nn.Linear(width, 1), std=0.01))  # f starts near 0: D near pi(a|s)'s verdict


class AirlDiscriminator(nn.Module):
    """f_{theta,phi}(s, a, s') of Eq. 4 from the reward approximator g_theta and the shaping term h_phi (App. D.1)."""

    def __init__(self, reward_in_dim, obs_dim, hidden_size, reward_layers, shaping_layers):
        super().__init__()
        self.g = relu_mlp(reward_in_dim, hidden_size, reward_layers)
        self.h = relu_mlp(obs_dim, hidden_size, shaping_layers)

    def forward(self, samples, gamma):  # f [B] of a dict of `discriminator_inputs`
        g = self.g(samples["reward_inputs"]).squeeze(-1)
        h, h_next = self.h(samples["shaping_inputs"]).squeeze(-1), self.h(samples["next_shaping_inputs"]).squeeze(-1)
        return shaped_reward_f(g, h, h_next, samples["f_terminations"], gamma)


@torch.no_grad()
def policy_log_prob(policy, samples):
    """log pi(a|s) of the stored actions under the policy as it is now, without gradient (App. A: D trains f only), for
    expert and agent samples alike; 0 at the absorbing state, whose single action the policy does not choose."""
    log_pi = policy.distribution(policy(samples["observations"])).log_prob(samples["actions"])
    return log_pi * (1 - samples["absorbing"]) if "absorbing" in samples else log_pi


def update_discriminator(discriminator, optimizer, policy, expert, negatives, num_samples, args):
    """Alg. 1 line 5, logistic regression: --disc-epochs passes, each over num_samples negatives drawn without replacement
    from the replayed agent samples (App. D.3) in --disc-num-minibatches minibatches, each against as many expert samples
    drawn with replacement; both sides' log pi(a|s) from the policy as it is now. Returns the last loss."""
    device = expert["observations"].device
    for _ in range(args.disc_epochs):
        draw = torch.randperm(len(negatives["observations"]), device=device)[:num_samples]
        for index in draw.chunk(args.disc_num_minibatches):
            expert_index = torch.randint(len(expert["observations"]), (len(index),), device=device)
            expert_batch = {key: value[expert_index] for key, value in expert.items()}
            agent_batch = {key: value[index] for key, value in negatives.items()}
            expert_logits = airl_logits(discriminator(expert_batch, args.gamma), policy_log_prob(policy, expert_batch))
            agent_logits = airl_logits(discriminator(agent_batch, args.gamma), policy_log_prob(policy, agent_batch))
            loss = discriminator_loss(expert_logits, agent_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return loss.detach()


def pearson_correlation(x, y):
    """Pearson correlation of two [B] tensors (NaN where either is constant)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float((x @ y) / (x.norm() * y.norm()))


@torch.no_grad()
def reward_correlations(g, agent, expert, agent_env_rewards, expert_env_rewards, agent_rewards):
    """--log-reward-correlation: the Pearson correlation with the env's reward of g on the agent's samples, on the expert
    demos (without s_a, which has no env reward) and on both, and of the policy's reward on the agent's samples."""
    g_agent, g_expert = (g(samples["reward_inputs"]).squeeze(-1) for samples in (agent, expert))
    g_expert = g_expert[expert["absorbing"] == 0]
    return {
        "g_agent": pearson_correlation(g_agent, agent_env_rewards),
        "g_expert": pearson_correlation(g_expert, expert_env_rewards),
        "g_all": pearson_correlation(torch.cat([g_agent, g_expert]), torch.cat([agent_env_rewards, expert_env_rewards])),
        "reward_agent": pearson_correlation(agent_rewards, agent_env_rewards),
    }


def write_reward_correlation_row(run_dir, row):
    """Append one iteration's correlations to reward_correlation.csv (--log-reward-correlation), flushed at once."""
    path = Path(run_dir) / "reward_correlation.csv"
    header = "" if path.exists() else ",".join(row) + "\n"
    with open(path, "a") as f:
        f.write(header + ",".join(f"{value:.6g}" if isinstance(value, float) else str(value) for value in row.values()) + "\n")


# ------------------------------------------------------------------------------------ the TRPO block (of gail.py)
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


def trpo_step(policy, obs, actions, advantages, args):
    """One TRPO update of the policy in place (Schulman et al. 2015, Eq. 14 and Appendix C): maximise the surrogate
    L(theta) = mean[pi_theta(a|s) / pi_old(a|s) A] subject to mean KL(pi_old || pi_theta) <= --max-kl. The natural
    gradient direction s = F^-1 g comes from `conjugate_gradient`, F estimated on every --fisher-subsample-th state;
    the full step beta s, beta = sqrt(2 max_kl / s^T F s), reaches the KL bound under the quadratic model, and the line
    search shrinks it until the batch's KL is <= max_kl and the surrogate improves by at least --accept-ratio of its
    linear prediction (else the policy is left unchanged). Returns the KL, the improvement and the backtracks."""
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
    fvp = lambda v: fisher_vector_product(policy, obs[:: args.fisher_subsample], v, args.cg_damping)
    direction = conjugate_gradient(fvp, grad, args.cg_iterations)
    full_step = direction * torch.sqrt(2 * args.max_kl / (direction @ fvp(direction) + 1e-8))
    expected_improvement = grad @ full_step
    theta_old = nn.utils.parameters_to_vector(params).detach().clone()
    with torch.no_grad():
        for backtracks in range(args.backtrack_iterations):
            fraction = args.backtrack_coef**backtracks
            nn.utils.vector_to_parameters(theta_old + fraction * full_step, params)
            new_surrogate, kl = surrogate_and_kl()
            improvement = new_surrogate - surrogate.detach()
            # expected_improvement = g^T F^-1 g beta > 0, so an accepted step always improves the surrogate
            if kl <= args.max_kl and improvement > args.accept_ratio * fraction * expected_improvement:
                return {"kl": kl, "surrogate_improvement": improvement, "backtracks": torch.tensor(float(backtracks))}
        nn.utils.vector_to_parameters(theta_old, params)
    zero = torch.zeros((), device=grad.device)
    return {"kl": zero, "surrogate_improvement": zero, "backtracks": torch.tensor(float(args.backtrack_iterations))}


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
    budgets = ("total_timesteps", "eval_frequency", "eval_episodes", "num_expert_trajectories", "subsample_frequency")
    sizes = ("num_envs", "num_steps", "fisher_subsample", "value_epochs", "value_num_minibatches", "hidden_size")
    for name in (*budgets, *sizes, "disc_epochs", "disc_num_minibatches", "disc_hidden_size", "disc_replay_iterations"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.reward_hidden_layers < 0 or args.shaping_hidden_layers < 0:
        sys.exit("error: --reward-hidden-layers and --shaping-hidden-layers must be >= 0.")
    if args.num_steps < 2 or args.max_kl <= 0:
        # with 2 steps or more every env contributes a transition: only the step after an episode's end carries none
        sys.exit(f"error: --num-steps must be >= 2 and --max-kl > 0, got {args.num_steps} and {args.max_kl}.")
    if args.total_timesteps < args.num_envs * args.num_steps:
        one = f"one iteration of --num-envs {args.num_envs} x --num-steps {args.num_steps}"
        sys.exit(f"error: --total-timesteps {args.total_timesteps} is less than {one}; pass more, or lower either.")
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / run_name

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    precision = "fp32"

    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    if not isinstance(eval_env.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        sys.exit(f"error: {Path(__file__).name} needs Discrete or Box actions; {args.env_id} has {eval_env.action_space}.")
    keys = DEMO_KEYS + (("rewards",) if args.log_reward_correlation else ())
    info, demos = load_expert(
        expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, keys, args.any_env
    )
    # next-step autoreset (gymnasium 1.x): the step() after an env's episode ends only resets it (action ignored,
    # reward 0, no transition); the step that ended the episode already returned its true final observation
    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    action_space = envs.single_action_space
    discrete = isinstance(action_space, gym.spaces.Discrete)
    dtypes = {"actions": torch.long if discrete else torch.float32}
    expert = {key: torch.as_tensor(value, dtype=dtypes.get(key, torch.float32), device=device) for key, value in demos.items()}
    expert_rewards = expert.pop("rewards", None)  # the env's, for --log-reward-correlation only: training never sees them
    flat_obs = expert["observations"].flatten(1)
    # +1e-3 keeps near-constant observation dims (e.g. a pole the expert holds still) from blowing up, as TD3+BC does
    obs_mean, obs_std = (flat_obs.mean(0), flat_obs.std(0) + 1e-3) if args.normalize_observations else (0.0, 1.0)

    def normalize(obs):
        return (torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1) - obs_mean) / obs_std

    expert = {key: normalize(value) if "observations" in key else value for key, value in expert.items()}
    expert["absorbing"] = torch.zeros(len(expert["observations"]), device=device)
    airl_inputs = lambda samples: discriminator_inputs(samples, action_space, args.state_only, args.absorbing_state)
    absorbing_sample = airl_inputs(absorbing_transitions(1, expert))  # (s_a, 0, s_a), whose reward bootstraps a termination
    if args.absorbing_state:
        # one absorbing transition per terminated demo episode, kept whatever subsampling dropped (as DAC)
        _, episodes = load_expert(
            expert_dir, eval_env, args.num_expert_trajectories, 1, args.seed, ("terminations",), args.any_env
        )
        rows = absorbing_transitions(int(episodes["terminations"].sum()), expert)
        expert = {key: torch.cat([value, rows[key]]) for key, value in expert.items()}
    expert = airl_inputs(expert)

    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = Policy(obs_dim, action_space, args.hidden_size).to(device)
    value_network = mlp(obs_dim, 1, args.hidden_size, out_std=1.0).to(device)
    value_optimizer = torch.optim.Adam(value_network.parameters(), lr=args.value_learning_rate)
    disc_layers = (args.disc_hidden_size, args.reward_hidden_layers, args.shaping_hidden_layers)
    discriminator = AirlDiscriminator(expert["reward_inputs"].shape[1], expert["shaping_inputs"].shape[1], *disc_layers).to(
        device
    )
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.disc_learning_rate)
    low, high = (None, None) if discrete else (action_space.low, action_space.high)
    replay = deque(maxlen=args.disc_replay_iterations)  # App. D.3: the agent samples of the latest iterations
    eval_rows, correlations = [], {}

    # rollout storage, [num_steps, num_envs, ...] on the training device
    shape = (args.num_steps, args.num_envs)
    b_obs, b_next_obs = torch.zeros(*shape, obs_dim, device=device), torch.zeros(*shape, obs_dim, device=device)
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
            "normalized_score": normalized_score(float(returns.mean()), info),
            "wall_time": wall_time,
            "sps": global_step / max(wall_time, 1e-9),
        }
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        if args.track:
            wandb.log({"eval/return": returns.mean(), "eval/normalized_score": row["normalized_score"]}, step=global_step)
        progress.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    start_time = time.time()
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
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
            next_obs, reward, terminated, truncated, infos = envs.step(
                action_np if discrete else np.clip(action_np, low, high)
            )
            b_obs[step], b_next_obs[step], b_actions[step] = obs_t, normalize(next_obs), action
            b_terminations[step] = torch.as_tensor(terminated, dtype=torch.float32, device=device)
            b_dones[step] = torch.as_tensor(terminated | truncated, dtype=torch.float32, device=device)
            b_valid[step] = torch.as_tensor(valid, dtype=torch.float32, device=device)
            b_env_rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
            if "episode" in infos:
                episode_returns.extend(infos["episode"]["r"][infos["_episode"]])
            valid = ~(terminated | truncated)
            obs = next_obs
        mask, steps = b_valid.bool(), int(b_valid.sum())
        batch = {"observations": b_obs[mask], "actions": b_actions[mask], "next_observations": b_next_obs[mask]}
        batch |= {"terminations": b_terminations[mask], "absorbing": torch.zeros(steps, device=device)}
        rows = absorbing_transitions(int(batch["terminations"].sum()) if args.absorbing_state else 0, batch)
        replay.append(airl_inputs({key: torch.cat([value, rows[key]]) for key, value in batch.items()}))
        batch = airl_inputs(batch)
        negatives = {key: torch.cat([old[key] for old in replay]) for key in batch}

        # Alg. 1 line 5: logistic regression, expert samples against the agent's of the latest iterations (App. D.3)
        disc_loss = update_discriminator(discriminator, disc_optimizer, policy, expert, negatives, steps, args)
        # Alg. 1 lines 6-7: a TRPO step on r = log D - log(1 - D) = f - log pi of the updated discriminator, GAE advantages
        with torch.no_grad():
            agent_log_pi = policy_log_prob(policy, batch)
            agent_logits = airl_logits(discriminator(batch, args.gamma), agent_log_pi)
            rewards = torch.zeros(shape, device=device)
            rewards[mask] = learned_reward(agent_logits, agent_log_pi, args.entropy_weight)
            values, next_values = value_network(b_obs).squeeze(-1), value_network(b_next_obs).squeeze(-1)
            terminations = b_terminations
            if args.absorbing_state:
                absorbing_reward = learned_reward(discriminator(absorbing_sample, args.gamma), 0.0, args.entropy_weight)
                next_values, terminations = bootstrap_absorbing_state(next_values, terminations, absorbing_reward, args.gamma)
            advantages = gae(rewards, values, next_values, terminations, b_dones, args.gamma, args.gae_lambda)
            returns, advantages = (advantages + values)[mask], advantages[mask]
            # standardised per batch, as the original code does: TRPO's step size is set by the KL bound anyway
            advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)
        stats = trpo_step(policy, batch["observations"], batch["actions"], advantages, args)
        for _ in range(args.value_epochs):
            for index in torch.randperm(len(returns), device=device).chunk(args.value_num_minibatches):
                v_loss = value_loss(value_network(batch["observations"][index]).squeeze(-1), returns[index])
                value_optimizer.zero_grad(set_to_none=True)
                v_loss.backward()
                value_optimizer.step()

        global_step += steps
        progress.update(steps)
        if args.log_reward_correlation:
            correlations = reward_correlations(
                discriminator.g, batch, expert, b_env_rewards[mask], expert_rewards, rewards[mask]
            )
            write_reward_correlation_row(run_dir, {"global_step": global_step, **correlations})
        if args.track:  # TRPO's kl, surrogate_improvement and backtracks, D's accuracies, the reward, g, the losses
            with torch.no_grad():
                expert_logits = airl_logits(discriminator(expert, args.gamma), policy_log_prob(policy, expert))
                stats["disc_accuracy_expert"] = (expert_logits > 0).float().mean()
                stats["disc_accuracy_agent"] = (agent_logits < 0).float().mean()
                stats["g_expert"], stats["g_agent"] = (discriminator.g(x["reward_inputs"]).mean() for x in (expert, batch))
            stats |= {"learned_reward": rewards[mask].mean(), "SPS": global_step / (time.time() - start_time)}
            stats |= {f"reward_correlation_{key}": value for key, value in correlations.items()}
            losses = {"discriminator_loss": disc_loss, "value_loss": v_loss.detach()}
            log = {f"charts/{key}": value for key, value in stats.items()} | {f"losses/{k}": v for k, v in losses.items()}
            if episode_returns:
                log["charts/episodic_return"] = np.mean(episode_returns)
            wandb.log({key: float(value) for key, value in log.items()}, step=global_step)
        if global_step // args.eval_frequency > (global_step - steps) // args.eval_frequency or iteration == num_iterations:
            if not torch.isfinite(torch.stack([disc_loss, v_loss])).all():
                sys.exit(f"error: a loss is not finite at iteration {iteration}; lower the learning rates.")
            run_evaluation(global_step)
    progress.total = global_step  # autoreset steps fell short of the budget: the bar ends at 100%
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = global_step / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, device, precision)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    if args.log_reward_correlation:
        print(
            f"{run_name}: correlation of g with the env's reward on the demos and the last batch: {correlations['g_all']:.3f}"
        )
    envs.close()
    eval_env.close()
    if args.track:
        wandb.finish()
