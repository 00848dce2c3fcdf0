"""REINFORCE: the Monte Carlo policy gradient, from which the lecture derives every policy-gradient method.

REINFORCE (Williams 1992, Machine Learning 8:229-256) ascends grad J(theta) = E[sum_t grad log pi_theta(a_t|s_t)
(Psi_t - b(s_t))] (the episodic REINFORCE of his Sec. 5, a baseline b as in his Sec. 4), estimated from whole episodes
of the current policy (`reinforce_loss`). The lecture's two weights Psi_t are both here: the whole episode's return
G_0 = sum_t gamma^t r_t at every step (`episode_returns`, `--no-reward-to-go`) and, by default, the reward-to-go
G_t = sum_{t' >= t} gamma^{t'-t} r_{t'} (`rewards_to_go`, Sutton & Barto 2018, Sec. 13.3: causality drops the rewards
before t, which a_t cannot change, and with them only noise; the gamma^t factor of their box is dropped, as in common
practice). `--baseline` subtracts a learned state value V_phi(s_t) regressed on Psi_t (`value_loss`, Sec. 13.4; any
function of s_t leaves the estimator unbiased); `--norm-adv` standardises a batch's advantages (the centring acts as a
constant baseline, the scaling as a per-batch step size). `episode_gradient_variance` (`charts/grad_variance` under
`--track`) is the variance across a batch's episodes of the single-episode gradient estimates, the quantity
reward-to-go and the baseline reduce. An update uses `--num-episodes` complete episodes, one per vector env; a
categorical policy for discrete actions, a diagonal Gaussian with a state-independent log std for continuous ones.
The env's reward drives learning: expert.json, when present, only gives the normalized score.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import time
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
    total_timesteps: int = 100_000
    """total environment transitions learned from"""
    eval_frequency: int = 10_000
    """evaluate the deterministic policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/); read only for the normalized score"""

    # REINFORCE
    num_episodes: int = 8
    """complete episodes per policy update, collected in parallel (one per vector env)"""
    gamma: float = 0.99
    """the discount factor gamma of the returns"""
    reward_to_go: bool = True
    """weight grad log pi(a_t|s_t) by the reward-to-go G_t; off, by the whole episode's return G_0 (the lecture's first)"""
    learning_rate: float = 3e-3
    """the learning rate of the policy's Adam optimizer"""
    baseline: bool = False
    """subtract a learned state-value baseline V(s_t), regressed on the returns, from the returns (G_t or G_0)"""
    value_learning_rate: float = 1e-3
    """the learning rate of the value baseline's Adam optimizer"""
    value_iterations: int = 25
    """full-batch gradient steps on the value baseline per update"""
    norm_adv: bool = True
    """standardise the advantages (returns minus baseline) of each batch"""
    hidden_size: int = 64
    """width of the two hidden layers of the policy and of the value network"""


# ------------------------------------------------------------------------------------------------------ REINFORCE
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
    """pi_theta(a|s): categorical over logits, or N(mu_theta(s), diag exp(2 log_std)) with a state-independent log_std."""

    def __init__(self, obs_dim, action_space, hidden_size):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        out_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.network = mlp(obs_dim, out_dim, hidden_size, out_std=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(out_dim))

    def distribution(self, obs):
        out = self.network(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Independent(torch.distributions.Normal(out, self.log_std.exp().expand_as(out)), 1)


def rewards_to_go(rewards, dones, gamma):
    """G_t = r_t + gamma (1 - done_t) G_{t+1} backwards over time ([T, num_envs] tensors): the discounted reward-to-go
    of each step within its own episode; done_t (termination or time-limit truncation) closes the episode at t."""
    returns, future = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        future = rewards[t] + gamma * (1.0 - dones[t].float()) * future
        returns[t] = future
    return returns


def episode_returns(rewards, dones, gamma):
    """G_0 = sum_{t'} gamma^{t'-t_0} r_{t'} over the episode that holds step t, repeated at each of its steps ([T, num_envs]
    tensors): the full-trajectory weight of the lecture's first estimator, grad J = E[sum_t grad log pi(a_t|s_t) G_0].
    Episodes are delimited as in `rewards_to_go`: done_t closes the episode at t, the next step opens a new one."""
    starts = rewards_to_go(rewards, dones, gamma)  # G_t, which is G_0 at each episode's first step
    returns = torch.empty_like(starts)
    returns[0] = current = starts[0]
    for t in range(1, len(rewards)):
        current = torch.where(dones[t - 1].bool(), starts[t], current)
        returns[t] = current
    return returns


def reinforce_loss(log_probs, advantages):
    """Williams' estimator: -1/N sum_t log pi(a_t|s_t) A_t, A_t = Psi_t - b(s_t) held constant (Psi_t = G_t or G_0); its
    gradient is the sample mean of grad log pi(a_t|s_t) A_t over the batch's N transitions."""
    return -(log_probs * advantages.detach()).mean()


def episode_gradient_variance(log_probs, weights, episode_ids, parameters):
    """tr Cov_i[g_i], g_i = sum_{t in episode i} grad_theta log pi(a_t|s_t) Psi_t: the sample variance across the batch's
    episodes of the single-episode policy-gradient estimates (the lecture's estimator with N = 1), summed over the
    parameters. One backward pass per episode; log_probs keeps its graph for the update's own backward pass."""
    parameters = list(parameters)
    estimates = []
    for episode in episode_ids.unique():
        in_episode = episode_ids == episode
        g_i = torch.autograd.grad((log_probs[in_episode] * weights[in_episode].detach()).sum(), parameters, retain_graph=True)
        estimates.append(torch.cat([grad.flatten() for grad in g_i]))
    return torch.stack(estimates).var(0).sum()


def value_loss(values, returns):
    """Baseline regression: 1/2 mean (V_phi(s_t) - Psi_t)^2 on the estimator's own Monte Carlo weight (no bootstrapping)."""
    return 0.5 * F.mse_loss(values, returns)


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
    for name in ("total_timesteps", "eval_frequency", "eval_episodes", "num_episodes", "value_iterations", "hidden_size"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
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
        sys.exit(f"error: reinforce.py supports Discrete and Box actions, but {args.env_id} has {eval_env.action_space}.")
    expert_json = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id) / "expert.json"
    expert_info = json.loads(expert_json.read_text()) if expert_json.exists() else None
    # next-step autoreset (gymnasium 1.x): the step after an episode's last one only resets that env; it falls in the
    # masked-out tail below, so no final observation is ever needed (REINFORCE never bootstraps)
    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: make_env(args.env_id, args.seed + i) for i in range(args.num_episodes)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = Policy(obs_dim, envs.single_action_space, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    if args.baseline:
        value_network = mlp(obs_dim, 1, args.hidden_size, out_std=1.0).to(device)
        value_optimizer = torch.optim.Adam(value_network.parameters(), lr=args.value_learning_rate)
    if not policy.discrete:
        low, high = envs.single_action_space.low, envs.single_action_space.high
    eval_rows, precision = [], "fp32"

    @torch.no_grad()
    def act_deterministic(obs):
        out = policy.network(torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1)).cpu().numpy()
        return out.argmax(-1) if policy.discrete else np.clip(out.reshape((len(obs), *low.shape)), low, high)

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
        if args.track:
            wandb.log({"eval/return": returns.mean(), "eval/normalized_score": row["normalized_score"]}, step=global_step)
        progress.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    start_time = time.time()
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    global_step = 0
    while global_step < args.total_timesteps:
        # collect one complete episode per env; `alive` masks each env's steps after its episode ended
        obs, _ = envs.reset(seed=args.seed if global_step == 0 else None)
        alive = np.ones(args.num_episodes, dtype=bool)
        batch = []  # (obs, action, reward, done, alive) of every step
        while alive.any():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1)
            with torch.no_grad():
                action = policy.distribution(obs_t).sample()
            action_np = action.cpu().numpy()
            # the Gaussian's sample is clipped for the env only; its log-prob stays that of the unclipped sample
            obs, reward, terminated, truncated, _ = envs.step(action_np if policy.discrete else np.clip(action_np, low, high))
            batch.append((obs_t, action, reward, terminated | truncated, alive.copy()))
            alive &= ~(terminated | truncated)
        batch_obs, batch_actions, batch_rewards, batch_dones, batch_valid = zip(*batch)
        rewards = torch.as_tensor(np.array(batch_rewards), dtype=torch.float32, device=device)  # [T, num_episodes]
        valid = torch.as_tensor(np.array(batch_valid), device=device)
        dones = torch.as_tensor(np.array(batch_dones), device=device)
        returns = (rewards_to_go if args.reward_to_go else episode_returns)(rewards, dones, args.gamma)[valid]
        b_obs, b_actions = torch.stack(batch_obs)[valid], torch.stack(batch_actions)[valid]
        episode_ids = torch.arange(args.num_episodes, device=device).expand_as(valid)[valid]

        advantages = returns
        if args.baseline:
            with torch.no_grad():
                advantages = returns - value_network(b_obs).squeeze(-1)
        log_probs = policy.distribution(b_obs).log_prob(b_actions)
        if args.track and args.num_episodes > 1:
            # before --norm-adv, whose rescaling would hide the scale the estimators differ in; one backward pass per episode
            grad_variance = episode_gradient_variance(log_probs, advantages, episode_ids, policy.parameters()).item()
        if args.norm_adv and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        loss = reinforce_loss(log_probs, advantages)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if args.baseline:
            # fit V after the policy step, so that A_t never uses a baseline fitted on the very returns it centres
            for _ in range(args.value_iterations):
                v_loss = value_loss(value_network(b_obs).squeeze(-1), returns)
                value_optimizer.zero_grad(set_to_none=True)
                v_loss.backward()
                value_optimizer.step()
        if not torch.isfinite(loss):
            sys.exit(f"error: non-finite REINFORCE loss at step {global_step}; lower --learning-rate.")

        num_steps = len(returns)
        global_step += num_steps
        # the last batch may pass the budget: the bar's total grows to the steps run instead of becoming a bare counter
        progress.total = max(progress.total, global_step)
        progress.update(num_steps)
        if args.track:
            stats = {
                "losses/policy_loss": loss.item(),
                "charts/episodic_return": (rewards * valid).sum(0).mean().item(),
                "charts/episodic_length": num_steps / args.num_episodes,
                "charts/SPS": global_step / (time.time() - start_time),
                **({"losses/value_loss": v_loss.item()} if args.baseline else {}),
                **({"charts/grad_variance": grad_variance} if args.num_episodes > 1 else {}),
            }
            wandb.log(stats, step=global_step)
        crossed_eval_step = global_step // args.eval_frequency > (global_step - num_steps) // args.eval_frequency
        if crossed_eval_step or global_step >= args.total_timesteps:
            run_evaluation(global_step)
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = global_step / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, device, precision)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    envs.close()
    eval_env.close()
    if args.track:
        wandb.finish()
