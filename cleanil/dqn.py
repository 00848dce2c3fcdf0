"""Deep Q-Network: the discrete-action expert trainer (CartPole-v1, Acrobot-v1, MountainCar-v0).

DQN (Mnih et al. 2015, Nature 518; arXiv 1312.5602) regresses Q(s, a) on the one-step target
r + gamma (1 - d) max_a' Q_target(s', a') (Alg. 1, the squared TD error, `td_loss`; `--double-q` takes a' from the
online network, van Hasselt et al. 2016, arXiv 1509.06461), with an epsilon-greedy behaviour policy whose epsilon
decays linearly (`linear_schedule`), a replay memory, and a periodically copied target network. Follows
cleanrl/dqn.py; the per-env settings that produced the shipped experts are the rl-baselines3-zoo ones, given as flags
in the README.

MountainCar-v0's reward is -1 per step until the flag, which plain DQN rarely reaches in few steps: `--shaping-coef`
adds the potential-based term gamma Phi(s') - Phi(s) with Phi the cart's mechanical energy
(`mountain_car_potential`; Ng, Harada, Russell 1999), which leaves the optimal policy unchanged. Evaluation always
uses the true reward.

At the end the run folder holds policy.pt, the greedy policy's Q-network (a plain MLP obs -> Q-values whose argmax is
the action; the best-evaluated or the final one, `--snapshot`), and policy.json, its spec;
`python cleanil/demos.py --from-policy runs/<run>` records an expert folder from them.
"""

import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
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
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 50_000
    """total environment steps of the experiment"""
    eval_frequency: int = 5_000
    """evaluate the greedy policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/); read only for the normalized score"""

    # DQN (defaults: rl-baselines3-zoo's CartPole-v1 settings)
    learning_rate: float = 2.3e-3
    """the learning rate of the optimizer"""
    buffer_size: int = 100_000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    target_network_frequency: int = 10
    """copy the Q-network into the target network every this many environment steps"""
    batch_size: int = 64
    """the batch size of samples from the replay memory"""
    start_e: float = 1.0
    """the starting epsilon for exploration"""
    end_e: float = 0.04
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.16
    """the fraction of `total_timesteps` it takes from start_e to end_e"""
    learning_starts: int = 1_000
    """environment steps before learning starts"""
    train_frequency: int = 256
    """train every this many environment steps"""
    gradient_steps: int = 128
    """gradient steps each time the network is trained"""
    hidden_size: int = 256
    """width of the two hidden layers of the Q-network"""
    double_q: bool = False
    """pick the bootstrap action with the online network (Double DQN)"""
    max_grad_norm: float = 10.0
    """gradient clipping norm (as in stable-baselines3's DQN)"""
    shaping_coef: float = 0.0
    """MountainCar-v0 only: scale of the potential-based energy shaping used for training (0: true reward)"""
    snapshot: Literal["best", "final"] = "best"
    """which Q-network policy.pt holds: `best` (highest eval return seen) or `final`"""


# ------------------------------------------------------------------------------------------------------------ DQN
class QNetwork(nn.Module):
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


class ReplayBuffer:
    """Transitions in preallocated tensors on the training device; uniform sampling without leaving it."""

    def __init__(self, obs_dim, size, device):
        self.observations = torch.zeros(size, obs_dim, device=device)
        self.actions = torch.zeros(size, dtype=torch.long, device=device)
        self.rewards = torch.zeros(size, device=device)
        self.next_observations = torch.zeros(size, obs_dim, device=device)
        self.terminations = torch.zeros(size, device=device)
        self.size, self.pos, self.full = size, 0, False

    def add(self, obs, action, reward, next_obs, termination):
        for storage, value in zip(self.tensors(), (obs, action, reward, next_obs, termination)):
            storage[self.pos] = torch.as_tensor(value, dtype=storage.dtype)
        self.pos = (self.pos + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, batch_size):
        index = torch.randint(0, self.size if self.full else self.pos, (batch_size,), device=self.observations.device)
        return [storage[index] for storage in self.tensors()]

    def tensors(self):
        return self.observations, self.actions, self.rewards, self.next_observations, self.terminations


def linear_schedule(start_e, end_e, duration, t):
    return max(end_e, start_e + (end_e - start_e) * t / duration)


def mountain_car_potential(obs, gamma_scale):
    """Phi(s): the cart's mechanical energy, from the dynamics v' = v + 0.001 F - 0.0025 cos(3x) (gravity term)."""
    position, velocity = obs[..., 0], obs[..., 1]
    return gamma_scale * (0.0025 / 3 * np.sin(3 * position) + 0.5 * velocity**2)


def td_loss(q_network, target_network, batch, gamma, double_q):
    """Alg. 1: (r + gamma (1 - d) max_a' Q_target(s', a') - Q(s, a))^2 (Huber-free, as cleanrl/dqn.py)."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        next_q = target_network(next_obs)
        if double_q:
            next_value = next_q.gather(1, q_network(next_obs).argmax(1, keepdim=True)).squeeze(1)
        else:
            next_value = next_q.max(1).values
        td_target = rewards + gamma * (1 - terminations) * next_value
    q_values = q_network(obs).gather(1, actions[:, None]).squeeze(1)
    return F.mse_loss(q_values, td_target), q_values


def policy_spec(q_network):
    """policy.json's "policy": the plain MLP obs -> Q-values of policy.pt, whose argmax is the greedy action."""
    layers = [layer for layer in q_network.network if isinstance(layer, nn.Linear)]
    return {
        "file": "policy.pt",
        "layers": [int(layers[0].in_features), *(int(layer.out_features) for layer in layers)],
        "activation": "relu",
        "output": "argmax",
    }


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
    positive = ("total_timesteps", "eval_frequency", "eval_episodes", "batch_size", "buffer_size", "train_frequency")
    for name in (*positive, "gradient_steps", "target_network_frequency", "hidden_size"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.total_timesteps <= args.learning_starts:
        sys.exit(f"error: --total-timesteps {args.total_timesteps} must exceed --learning-starts {args.learning_starts}.")
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / run_name

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    env = make_env(args.env_id, args.seed)
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        sys.exit(f"error: dqn.py needs discrete actions but {args.env_id} has {env.action_space}; use cleanil/sac.py.")
    if args.shaping_coef and args.env_id != "MountainCar-v0":
        sys.exit(f"error: --shaping-coef is defined for MountainCar-v0 only, not {args.env_id}; drop the flag.")
    expert_json = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id) / "expert.json"
    expert_info = json.loads(expert_json.read_text()) if expert_json.exists() else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    obs_dim = int(np.prod(env.observation_space.shape))
    q_network = QNetwork(obs_dim, env.action_space.n, args.hidden_size).to(device)
    target_network = QNetwork(obs_dim, env.action_space.n, args.hidden_size).to(device)
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    rb = ReplayBuffer(obs_dim, args.buffer_size, device)
    eval_rows, best_q, precision = [], {}, "fp32"

    @torch.no_grad()
    def act_greedy(obs):
        return q_network(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(-1).cpu().numpy()

    def run_evaluation(global_step):
        returns = evaluate(act_greedy, eval_env, args.eval_episodes, args.seed + 10_000)
        wall_time = time.time() - start_time
        row = {
            "global_step": global_step,
            "eval_return_mean": float(returns.mean()),
            "eval_return_std": float(returns.std()),
            "normalized_score": normalized_score(float(returns.mean()), expert_info),
            "wall_time": wall_time,
            "sps": global_step / max(wall_time, 1e-9),
        }
        if not eval_rows or row["eval_return_mean"] > max(r["eval_return_mean"] for r in eval_rows):
            best_q.update(step=global_step, state={k: v.clone() for k, v in q_network.state_dict().items()})
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        if args.track:
            wandb.log({"eval/return": returns.mean(), "eval/normalized_score": row["normalized_score"]}, step=global_step)
        progress.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    start_time = time.time()
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    obs, _ = env.reset(seed=args.seed)
    for global_step in range(1, args.total_timesteps + 1):
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
        action = env.action_space.sample() if random.random() < epsilon else act_greedy(obs[None])[0]
        next_obs, reward, terminated, truncated, info = env.step(action)
        if args.shaping_coef:
            # potential-based shaping: F = gamma Phi(s') - Phi(s), with Phi(terminal) = 0
            next_potential = 0.0 if terminated else mountain_car_potential(next_obs, args.shaping_coef)
            reward = reward + args.gamma * next_potential - mountain_car_potential(obs, args.shaping_coef)
        # bootstrap through time-limit truncations: only a true termination zeroes the target
        rb.add(obs, action, reward, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            if args.track:
                episode = {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]}
                wandb.log({**episode, "charts/epsilon": epsilon}, step=global_step)
            obs, _ = env.reset()

        if global_step > args.learning_starts and global_step % args.train_frequency == 0:
            for _ in range(args.gradient_steps):
                loss, q_values = td_loss(q_network, target_network, rb.sample(args.batch_size), args.gamma, args.double_q)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(q_network.parameters(), args.max_grad_norm)
                optimizer.step()
            if not torch.isfinite(loss):
                sys.exit(f"error: non-finite TD loss at step {global_step}; lower --learning-rate.")
            if args.track:
                stats = {"losses/td_loss": loss.item(), "losses/q_values": q_values.mean().item()}
                wandb.log({**stats, "charts/SPS": global_step / (time.time() - start_time)}, step=global_step)
        if global_step > args.learning_starts and global_step % args.target_network_frequency == 0:
            target_network.load_state_dict(q_network.state_dict())
        progress.update(1)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            run_evaluation(global_step)
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = args.total_timesteps / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, device, precision)
    # policy.pt + policy.json: `python cleanil/demos.py --from-policy <run_dir>` turns them into an expert folder
    if args.snapshot == "best":
        q_network.load_state_dict(best_q["state"])
    torch.save({key: value.cpu() for key, value in q_network.network.state_dict().items()}, run_dir / "policy.pt")
    policy_json = {
        "env_id": args.env_id,
        "algorithm": "dqn",
        "snapshot": args.snapshot,
        "snapshot_step": best_q["step"] if args.snapshot == "best" else args.total_timesteps,
        "training_steps": args.total_timesteps,
        "training_wall_time_s": round(wall_time, 1),
        "refill_env_steps": 0,
        "seed": args.seed,
        "command": shlex.join(["python", *sys.argv]),
        "best_eval_return": max(row["eval_return_mean"] for row in eval_rows),
        "policy": policy_spec(q_network),
    }
    (run_dir / "policy.json").write_text(json.dumps(policy_json, indent=2) + "\n")
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
