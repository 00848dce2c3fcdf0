"""GAIfO: Generative Adversarial Imitation from Observation, GAIL with a discriminator on state transitions (s, s').

GAIfO (Torabi, Warnell, Stone 2018, arXiv 1807.06158) imitates from state-only demonstrations: the discriminator
D(s, s') tells the agent's state transitions from the expert's, which pins down the expert's behaviour (what it does
to the state) without its actions, and the policy is trained by TRPO on D's verdict, as in GAIL (Ho & Ermon 2016,
arXiv 1606.03476). Expert actions are never read (`DEMO_KEYS`). Map from Alg. 1 (paraphrased) to this file:
  execute pi, store its transitions (s, s')   --num-envs gymnasium vector envs, --num-steps steps each per iteration
  update D: min -E_pi[log D_paper(s, s')]     `update_discriminator`: `discriminator_loss` (+ optional
            - E_expert[log(1 - D_paper)]      `gradient_penalty`) on agent minibatches paired with as many expert ones
  TRPO on pi with reward -log D_paper(s, s')  `learned_reward`, advantages by `gae` (GAE, Schulman et al. 2016, arXiv
                                              1506.02438) with a value function fitted by `value_loss`, then
                                              `trpo_step` (Schulman et al. 2015, arXiv 1502.05477): `conjugate_gradient`
                                              on `fisher_vector_product`s and a line search
Convention (of the original GAIL code, not of the papers' objectives, whose D scores the policy):
D(x) = sigmoid(logit(x)) is the probability that x came from the EXPERT, so the paper's cost log D_paper is log(1 - D)
here. `--reward-type neg_log_one_minus_d` rewards -log(1 - D) >= 0, a survival bonus that suits tasks ending early on
failure (CartPole, MuJoCo); `log_d` rewards log D <= 0, a per-step cost that suits tasks ending early on success
(MountainCar, Acrobot: the original GAIL code's `favor_zero_expert_reward`). gamma 0.995, lambda 0.97, max KL 0.01 and
CG damping 0.1 are the original GAIL code's. Every network sees observations (s and s') standardised with the expert
demos' mean and std. Gymnasium's next-step autoreset makes the step after an episode's end a reset that carries no
transition: it is masked out of every loss and not counted as an environment step; the step that ends an episode
returns its true final s', which D sees, as it sees the expert's; time-limit truncations bootstrap from V(s'),
terminations do not.
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
from tqdm import tqdm

# the only expert arrays this script reads: never actions, which state-only imitation does not have
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
    """the reward, D = P(expert): -log(1 - D) >= 0 (tasks that end early on failure) or log D <= 0 (early on success)"""
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


# ---------------------------------------------------------------------------------------------------------- GAIfO
def discriminator_inputs(batch, action_space):
    """GAIfO's D scores state transitions (s, s'): the standardised s and s' side by side; actions are
    neither read nor needed (action_space is unused, kept so that gail.py and gaifo.py call this the same way)."""
    return torch.cat([batch["observations"], batch["next_observations"]], -1)


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
    return -F.softplus(-logits) if reward_type == "log_d" else F.softplus(logits)


def update_discriminator(discriminator, optimizer, expert_inputs, agent_inputs, args):
    """Alg. 1 line 4: --disc-epochs passes over the agent's inputs in --disc-num-minibatches minibatches, each against as
    many expert inputs drawn with replacement; discriminator maps inputs [B, d] to logits [B, 1], D = sigmoid(logit) =
    P(expert). Returns the last minibatch's loss and gradient penalty."""
    device = agent_inputs.device
    for _ in range(args.disc_epochs):
        for index in torch.randperm(len(agent_inputs), device=device).chunk(args.disc_num_minibatches):
            expert_batch = expert_inputs[torch.randint(len(expert_inputs), (len(index),), device=device)]
            expert_logits = discriminator(expert_batch).squeeze(-1)
            agent_logits = discriminator(agent_inputs[index]).squeeze(-1)
            loss = discriminator_loss(expert_logits, agent_logits, args.disc_entropy_coef)
            penalty = torch.zeros((), device=device)
            if args.gp_coef > 0:
                penalty = gradient_penalty(discriminator, expert_batch, agent_inputs[index])
            optimizer.zero_grad(set_to_none=True)
            (loss + args.gp_coef * penalty).backward()
            optimizer.step()
    return loss.detach(), penalty.detach()


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
    for name in (*budgets, *sizes, "disc_epochs", "disc_num_minibatches"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
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
    info, demos = load_expert(
        expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, DEMO_KEYS, args.any_env
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
    flat_obs = expert["observations"].flatten(1)
    # +1e-3 keeps near-constant observation dims (e.g. a pole the expert holds still) from blowing up, as TD3+BC does
    obs_mean, obs_std = (flat_obs.mean(0), flat_obs.std(0) + 1e-3) if args.normalize_observations else (0.0, 1.0)

    def normalize(obs):
        return (torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1) - obs_mean) / obs_std

    expert = {key: normalize(value) if "observations" in key else value for key, value in expert.items()}
    expert_inputs = discriminator_inputs(expert, action_space)

    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = Policy(obs_dim, action_space, args.hidden_size).to(device)
    value_network = mlp(obs_dim, 1, args.hidden_size, out_std=1.0).to(device)
    value_optimizer = torch.optim.Adam(value_network.parameters(), lr=args.value_learning_rate)
    discriminator = mlp(expert_inputs.shape[1], 1, args.hidden_size, out_std=0.01).to(device)  # D(x) = sigmoid(logit(x))
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.disc_learning_rate)
    low, high = (None, None) if discrete else (action_space.low, action_space.high)
    eval_rows = []

    # rollout storage, [num_steps, num_envs, ...] on the training device
    shape = (args.num_steps, args.num_envs)
    b_obs, b_next_obs = torch.zeros(*shape, obs_dim, device=device), torch.zeros(*shape, obs_dim, device=device)
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

        # Alg. 1: discriminator steps, then a TRPO step on the updated discriminator's reward, with GAE advantages
        disc_loss, penalty = update_discriminator(discriminator, disc_optimizer, expert_inputs, agent_inputs, args)
        with torch.no_grad():
            agent_logits = discriminator(agent_inputs).squeeze(-1)
            rewards = torch.zeros(shape, device=device)
            rewards[mask] = learned_reward(agent_logits, args.reward_type)
            values, next_values = value_network(b_obs).squeeze(-1), value_network(b_next_obs).squeeze(-1)
            advantages = gae(rewards, values, next_values, b_terminations, b_dones, args.gamma, args.gae_lambda)
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

        steps = int(mask.sum())
        global_step += steps
        progress.update(steps)
        if args.track:  # TRPO's kl, surrogate_improvement and backtracks, D's accuracies, the reward, the losses
            with torch.no_grad():
                stats["disc_accuracy_expert"] = (discriminator(expert_inputs) > 0).float().mean()
                stats["disc_accuracy_agent"] = (agent_logits < 0).float().mean()
            stats |= {"learned_reward": rewards[mask].mean(), "SPS": global_step / (time.time() - start_time)}
            losses = {"discriminator_loss": disc_loss, "gradient_penalty": penalty, "value_loss": v_loss.detach()}
            log = {f"charts/{key}": value for key, value in stats.items()} | {f"losses/{k}": v for k, v in losses.items()}
            if episode_returns:
                log["charts/episodic_return"] = np.mean(episode_returns)
            wandb.log({key: float(value) for key, value in log.items()}, step=global_step)
        if global_step // args.eval_frequency > (global_step - steps) // args.eval_frequency or iteration == num_iterations:
            if not torch.isfinite(torch.stack([disc_loss, penalty, v_loss])).all():
                sys.exit(f"error: a loss is not finite at iteration {iteration}; lower the learning rates.")
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
