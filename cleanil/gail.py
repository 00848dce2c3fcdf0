"""GAIL: Generative Adversarial Imitation Learning, occupancy-measure matching with a discriminator and a TRPO policy.

GAIL (Ho & Ermon 2016, arXiv 1606.03476) solves min_pi max_D E_pi[log D(s, a)] + E_piE[log(1 - D(s, a))] - lambda H(pi)
(Eq. 16): a discriminator tells the agent's state-action pairs from the expert's, and the policy, trained by TRPO on
the discriminator's verdict as its reward, moves its occupancy measure towards the expert's. Map from Alg. 1 to this file:
  "Sample trajectories tau_i ~ pi_theta_i"  --num-envs gymnasium vector envs, --num-steps steps each per iteration
  "Update the discriminator ... (Eq. 17)"   `discriminator_loss` (+ optional `gradient_penalty`), Adam on agent
                                            minibatches paired with equally many expert pairs, every iteration
  "TRPO rule with cost log D_{w_{i+1}}"     `learned_reward` from the updated discriminator, advantages by `gae`
                                            (GAE, Schulman et al. 2016, arXiv 1506.02438) with a separately trained
                                            value function (`value_loss`), then `trpo_step` (Schulman et al. 2015,
                                            arXiv 1502.05477): `conjugate_gradient` on `fisher_vector_product`s, and a
                                            backtracking line search that accepts a step only if the batch's mean KL is
                                            <= --max-kl and the surrogate improves; lambda = 0 (the original code's default)
Convention (of the original openai/imitation code, not of the paper's Eq. 16, whose D scores the policy):
D(x) = sigmoid(logit(x)) is the probability that x came from the EXPERT, so the paper's cost log D_paper is
log(1 - D) here. `--reward-type neg_log_one_minus_d` rewards -log(1 - D) >= 0, a survival bonus that suits tasks
ending early on failure (CartPole, MuJoCo); `log_d` rewards log D <= 0, a per-step cost that suits tasks ending early
on success (MountainCar, Acrobot: the original code's `favor_zero_expert_reward`). gamma 0.995, lambda 0.97,
max KL 0.01 and CG damping 0.1 are the original code's. Observations are standardised with the expert demos' mean and
std for the policy, the value function and the discriminator; continuous actions are fed to the discriminator
rescaled to [-1, 1] (clipped, as the env executes them), discrete ones one-hot. Gymnasium's next-step autoreset
makes the step after an episode's end a reset that carries no transition: it is masked out of every loss and not
counted as an environment step; time-limit truncations bootstrap from V(s'), terminations do not.
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

# the only expert arrays this script reads (gaifo.py: observations and next observations, never actions)
DEMO_KEYS = ("observations", "actions")


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
    """the discount factor gamma (original GAIL code)"""
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
    """width of the two tanh hidden layers of the policy, the value function and the discriminator"""
    normalize_observations: bool = True
    """standardise observations with the expert demos' mean and std (policy, value function, discriminator)"""

    # discriminator
    reward_type: Literal["neg_log_one_minus_d", "log_d"] = "neg_log_one_minus_d"
    """the policy's reward, D = P(expert): -log(1 - D) >= 0 (tasks that end early on failure) or log D <= 0 (tasks that end
    early on success)"""
    disc_learning_rate: float = 3e-4
    """the learning rate of the discriminator's Adam optimizer"""
    disc_epochs: int = 1
    """passes over each agent batch updating the discriminator"""
    disc_num_minibatches: int = 4
    """minibatches per discriminator epoch, each paired with as many expert samples (drawn with replacement)"""
    disc_entropy_coef: float = 1e-3
    """weight of the Bernoulli entropy bonus of D's outputs (original GAIL code), which keeps D from saturating"""
    gp_coef: float = 0.0
    """weight of the gradient penalty on D at expert-agent interpolates (0 disables; 10 as in DAC)"""


# ----------------------------------------------------------------------------------------------------------- GAIL
class Discriminator(nn.Module):
    """logit(x); D(x) = sigmoid(logit(x)) is the probability that x came from the expert."""

    def __init__(self, in_dim, hidden_size):
        super().__init__()
        self.network = mlp(in_dim, 1, hidden_size, out_std=0.01)

    def forward(self, x):
        return self.network(x).squeeze(-1)


def discriminator_inputs(batch, action_space):
    """GAIL's D scores state-action pairs (Eq. 16): the standardised s next to a one-hot discrete a, or a continuous a
    rescaled to [-1, 1] and clipped there, as the env clips what it executes (expert actions lie inside the bounds)."""
    actions = batch["actions"]
    if isinstance(action_space, gym.spaces.Discrete):
        actions = F.one_hot(actions.long(), int(action_space.n)).float()
    else:
        low, high = (
            torch.as_tensor(bound, dtype=torch.float32, device=actions.device)
            for bound in (action_space.low, action_space.high)
        )
        actions = ((2 * actions - (high + low)) / (high - low)).clamp(-1, 1)
    return torch.cat([batch["observations"], actions], -1)


def discriminator_loss(expert_logits, agent_logits, entropy_coef):
    """GAIL Alg. 1 line 4 (Eq. 17) as a loss to minimise, with D = P(expert): -E_expert[log D] - E_agent[log(1 - D)], each
    side averaged on its own (the original code weights both sides equally), minus entropy_coef times the mean
    Bernoulli entropy H(D) = softplus(logit) - D logit over both sides' logits together (the original code's
    regulariser, openai/baselines gail/adversary.py: reduce_mean over the concatenated logits)."""
    expert_term = F.binary_cross_entropy_with_logits(expert_logits, torch.ones_like(expert_logits))
    agent_term = F.binary_cross_entropy_with_logits(agent_logits, torch.zeros_like(agent_logits))
    logits = torch.cat([expert_logits, agent_logits])
    entropy = (F.softplus(logits) - torch.sigmoid(logits) * logits).mean()
    return expert_term + agent_term - entropy_coef * entropy


def gradient_penalty(discriminator, expert_inputs, agent_inputs):
    """E[(||grad_x logit(x_hat)||_2 - 1)^2] at x_hat = eps x_expert + (1 - eps) x_agent, eps ~ U[0, 1] per pair
    (WGAN-GP, Gulrajani et al. 2017, arXiv 1704.00028, Eq. 3), as DAC (Kostrikov et al. 2019, arXiv 1809.02925)
    adds it to GAIL's discriminator: it keeps D smooth between the two data sets, so the reward stays informative."""
    eps = torch.rand(len(expert_inputs), 1, device=expert_inputs.device)
    mixed = (eps * expert_inputs + (1 - eps) * agent_inputs).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    return ((grad.norm(2, dim=-1) - 1) ** 2).mean()


def learned_reward(logits, reward_type):
    """The policy's reward from D = sigmoid(logit) = P(expert), both increasing in D (the paper's cost log D_paper
    is log(1 - D) here): -log(1 - D) = softplus(logit) in [0, inf), or log D = -softplus(-logit) in (-inf, 0]."""
    if reward_type == "log_d":
        return -F.softplus(-logits)
    return F.softplus(logits)


# --------------------------------------------- the TRPO block: policy, GAE, value function, natural gradient step
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
    demos = load_demos(expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, DEMO_KEYS)
    discrete = isinstance(eval_env.action_space, gym.spaces.Discrete)
    for key, value in demos.items():
        if not (
            np.isin(value, np.arange(eval_env.action_space.n)) if key == "actions" and discrete else np.isfinite(value)
        ).all():
            sys.exit(
                f"error: {expert_dir / 'demos.npz'} holds invalid {key} (non-finite, or discrete actions outside the action "
                f"space); "
                f"regenerate it with `{expert_command(args.env_id, expert_dir)} --overwrite`."
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
    expert_inputs = discriminator_inputs(expert, action_space)

    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = Policy(obs_dim, action_space, args.hidden_size).to(device)
    value_network = mlp(obs_dim, 1, args.hidden_size, out_std=1.0).to(device)
    value_optimizer = torch.optim.Adam(value_network.parameters(), lr=args.value_learning_rate)
    discriminator = Discriminator(expert_inputs.shape[1], args.hidden_size).to(device)
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.disc_learning_rate)
    if not discrete:
        low, high = action_space.low, action_space.high
    eval_rows = []

    # rollout storage, [num_steps, num_envs, ...] on the training device
    shape = (args.num_steps, args.num_envs)
    b_obs = torch.zeros(*shape, obs_dim, device=device)
    b_next_obs = torch.zeros(*shape, obs_dim, device=device)
    b_actions = torch.zeros(shape + action_space.shape, dtype=torch.long if discrete else torch.float32, device=device)
    b_terminations, b_dones, b_valid = (torch.zeros(shape, device=device) for _ in range(3))

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
        # Alg. 1: sample trajectories of the current policy
        episode_returns = []
        for step in range(args.num_steps):
            obs_t = normalize(obs)
            with torch.no_grad():
                action = policy.distribution(policy(obs_t)).sample()
            action_np = action.cpu().numpy()
            # the Gaussian's sample is clipped for the env only; TRPO's likelihood ratio stays that of the sample
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
        batch = {"observations": b_obs[mask], "actions": b_actions[mask], "next_observations": b_next_obs[mask]}
        agent_inputs = discriminator_inputs(batch, action_space)

        # Alg. 1: discriminator steps, agent minibatches against as many expert samples
        for _ in range(args.disc_epochs):
            for index in torch.randperm(len(agent_inputs), device=device).chunk(args.disc_num_minibatches):
                expert_batch = expert_inputs[torch.randint(len(expert_inputs), (len(index),), device=device)]
                expert_logits, agent_logits = discriminator(expert_batch), discriminator(agent_inputs[index])
                disc_loss = discriminator_loss(expert_logits, agent_logits, args.disc_entropy_coef)
                penalty = (
                    gradient_penalty(discriminator, expert_batch, agent_inputs[index])
                    if args.gp_coef > 0
                    else torch.zeros((), device=device)
                )
                disc_optimizer.zero_grad(set_to_none=True)
                (disc_loss + args.gp_coef * penalty).backward()
                disc_optimizer.step()

        # Alg. 1: a TRPO step on the updated discriminator's reward, with GAE advantages
        with torch.no_grad():
            agent_logits = discriminator(agent_inputs)
            rewards = torch.zeros(shape, device=device)
            rewards[mask] = learned_reward(agent_logits, args.reward_type)
            values = value_network(b_obs).squeeze(-1)
            advantages = gae(
                rewards, values, value_network(b_next_obs).squeeze(-1), b_terminations, b_dones, args.gamma, args.gae_lambda
            )
            returns = (advantages + values)[mask]
            advantages = advantages[mask]
            # standardised per batch, as the original code does: TRPO's step size is set by the KL bound anyway
            advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)
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
                    "losses/gradient_penalty": penalty.detach(),
                    "losses/value_loss": v_loss.detach(),
                    "charts/disc_accuracy_expert": (discriminator(expert_inputs) > 0).float().mean(),
                    "charts/disc_accuracy_agent": (agent_logits < 0).float().mean(),
                    "charts/learned_reward": rewards[mask].mean(),
                    "charts/entropy": policy.distribution(policy(batch["observations"])).entropy().mean(),
                }
            )
        exit_if_non_finite(
            stats.values(),
            f"error: non-finite training statistics at iteration {iteration} "
            f"({ {k: float(v) for k, v in stats.items()} }); "
            f"lower --disc-learning-rate or --value-learning-rate, or pass --gp-coef 10.",
        )
        num_steps = int(mask.sum())
        global_step += num_steps
        progress.update(num_steps)
        log = {**stats, "charts/SPS": global_step / (time.time() - start_time)}
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
