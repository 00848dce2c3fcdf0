"""DAgger: Dataset Aggregation, imitation by querying the expert on the states the learner itself visits.

DAgger (Ross, Gordon, Bagnell 2011, "A Reduction of Imitation Learning and Structured Prediction to No-Regret Online
Learning", arXiv 1011.0686, Algorithm 3.1) fixes behavioural cloning's compounding errors: each round i rolls out the
mixture pi_i = beta_i pi* + (1 - beta_i) pi_hat_i, labels every visited state with the expert's action pi*(s),
aggregates these pairs into one dataset D and retrains the learner on all of D (Follow-the-Leader, Sec. 3-4).
Map from Algorithm 3.1 to this file:
  "Initialize D <- {}; pi_hat_1"          round 0: D = the expert demos (beta_1 = 1: expert trajectories), pi_hat_1
  "pi_i = beta_i pi* + (1-beta_i) pi_hat_i" `beta_schedule`; the mixture is drawn per step in the rollout loop
  "Sample T-step trajectories using pi_i" --steps-per-round environment steps per round, the env reset at its start
  "D_i = {(s, pi*(s))}"                    pi* (`load_expert_policy`) labels every visited state, whoever acted
  "D <- D u D_i"                           the round's pairs appended to the preallocated dataset tensors
  "Train classifier pi_hat_{i+1} on D"     `train_policy`: --epochs-per-round epochs of `bc_loss` on all of D, warm start
  "Return best pi_hat_i on validation"     every evaluation is logged; summary.json keeps the best normalized score
The learner (`Policy`) is a categorical policy (discrete actions) or a diagonal Gaussian with a state-independent std
(continuous actions) on observations standardized with the demos' statistics; it acts deterministically (argmax / mean)
in rollouts and evaluation. Each round reports `expert_agreement`, how often pi_hat_i's action matched pi*'s.
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
    total_timesteps: Optional[int] = None
    """environment steps of all rollouts; if set, it replaces --rounds by total_timesteps / steps_per_round"""
    eval_frequency: int = 1_000
    """evaluate the deterministic learner every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/): demos and policy.pt"""
    num_expert_trajectories: int = 10
    """expert demo episodes in the round-0 dataset (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th transition of each demo episode, from a random offset (1: all)"""
    any_env: bool = False
    """use an expert folder recorded on another env id (e.g. Hopper-v4 demos for Hopper-v5) when its shapes fit"""

    # DAgger
    rounds: int = 10
    """DAgger rounds after round 0 (the demos): each rolls out pi_i, aggregates and retrains"""
    steps_per_round: int = 1_000
    """environment steps rolled out with the mixture policy pi_i per round (all are labelled by the expert)"""
    beta_schedule: Literal["linear", "exponential"] = "linear"
    """how the expert's share beta_i of the mixture policy decays over rounds (beta_0 = 1: the demos)"""
    beta_rampdown_rounds: int = 5
    """linear schedule: beta_i = max(0, 1 - i / beta_rampdown_rounds)"""
    beta_decay: float = 0.5
    """exponential schedule: beta_i = beta_decay ** i (the paper's beta_i = p^(i-1))"""
    epochs_per_round: int = 10
    """passes over the whole aggregated dataset D when retraining the learner each round"""
    min_updates_per_round: int = 1_000
    """at least this many gradient steps per round: early rounds hold few pairs, so 10 epochs alone under-train"""
    batch_size: int = 256
    """minibatch size of the supervised updates"""
    learning_rate: float = 3e-4
    """the learning rate of the Adam optimizer"""
    hidden_size: int = 256
    """width of the learner's two hidden layers"""
    agreement_tolerance: float = 0.1
    """continuous actions: the learner agrees with pi* if every action coordinate is within this many half action ranges"""


# --------------------------------------------------------------------------------------------------------- DAgger
class ExpertPolicy(nn.Module):
    """pi*, rebuilt from expert.json["policy"]: argmax(mlp(s)) over discrete actions, else tanh(mlp(s)) * scale + bias."""

    def __init__(self, spec):
        super().__init__()
        layers, sizes = [], spec["layers"]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), {"relu": nn.ReLU, "tanh": nn.Tanh}[spec["activation"]]()]
        self.mlp, self.argmax = nn.Sequential(*layers[:-1]), spec["output"] == "argmax"
        self.register_buffer("action_scale", torch.tensor(spec.get("action_scale", 1.0), dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor(spec.get("action_bias", 0.0), dtype=torch.float32))

    def forward(self, obs):
        return self.mlp(obs).argmax(-1) if self.argmax else torch.tanh(self.mlp(obs)) * self.action_scale + self.action_bias


def load_expert_policy(expert_dir, info, device):
    """pi* from expert.json["policy"] and the weights file it names (policy.pt), without importing the trainer."""
    try:
        expert = ExpertPolicy(info["policy"])
        expert.mlp.load_state_dict(
            torch.load(Path(expert_dir) / info["policy"]["file"], map_location="cpu", weights_only=True)
        )
    except (KeyError, TypeError, ValueError, OSError, RuntimeError) as error:
        sys.exit(f"error: {expert_dir} has no expert policy ({error!r}); `python cleanil/demos.py --from-policy` records one.")
    return expert.to(device).eval()


class Policy(nn.Module):
    """pi_hat(a|s): softmax(logits(s)) over discrete actions, deterministic action argmax; or N(mu(s), diag sigma^2)
    with a learned state-independent sigma, deterministic action mu clipped to the action box."""

    def __init__(self, obs_mean, obs_std, action_space, hidden_size):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        out_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.mlp = nn.Sequential(
            nn.Linear(len(obs_mean), hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, out_dim),
        )
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(out_dim))
            self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32))
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))

    def forward(self, obs):
        """The logits, or the Gaussian's mean, of standardized observations."""
        return self.mlp((obs - self.obs_mean) / self.obs_std)

    def log_prob(self, obs, actions):
        if self.discrete:
            return self(obs).log_softmax(-1).gather(-1, actions[..., None]).squeeze(-1)
        return torch.distributions.Normal(self(obs), self.log_std.exp()).log_prob(actions).sum(-1)

    def deterministic_action(self, obs):
        return self(obs).argmax(-1) if self.discrete else torch.clamp(self(obs), self.action_low, self.action_high)


def beta_schedule(round_index, schedule, rampdown_rounds, decay):
    """beta_i, the expert's share of the mixture pi_i = beta_i pi* + (1 - beta_i) pi_hat_i (Alg. 3.1). Round 0 (the
    demos) is the paper's first iteration with beta_1 = 1; `exponential` is the paper's beta_i = p^(i-1) (Sec. 3),
    shifted to our 0-based rounds; `linear` ramps from 1 down to 0 at round rampdown_rounds."""
    if schedule == "linear":
        return max(0.0, 1.0 - round_index / rampdown_rounds)
    return decay**round_index


def bc_loss(policy, obs, expert_actions):
    """Alg. 3.1 "train classifier pi_hat_{i+1} on D": the negative log-likelihood -E_D[log pi_hat(pi*(s)|s)]
    (cross-entropy for discrete actions, Gaussian NLL for continuous ones)."""
    return -policy.log_prob(obs, expert_actions).mean()


def train_policy(policy, optimizer, observations, expert_actions, epochs, batch_size, min_updates=0):
    """epochs passes of minibatch bc_loss over the whole aggregated dataset D (more if that is fewer than min_updates
    gradient steps); returns the last epoch's mean loss."""
    batches_per_epoch = -(-len(observations) // batch_size)
    for _ in range(max(epochs, -(-min_updates // batches_per_epoch))):
        losses = []
        for index in torch.randperm(len(observations), device=observations.device).split(batch_size):
            loss = bc_loss(policy, observations[index], expert_actions[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    return torch.stack(losses).mean()


def expert_agreement(learner_actions, expert_actions, tolerance):
    """Fraction of states where pi_hat's action matches pi*'s: equal (integer actions), or every coordinate within
    `tolerance` (a per-dimension tensor) of it (continuous actions)."""
    if not torch.is_floating_point(learner_actions):
        return (learner_actions == expert_actions).float().mean()
    return ((learner_actions - expert_actions).abs() <= tolerance).all(-1).float().mean()


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
    budgets = ("eval_frequency", "eval_episodes", "rounds", "steps_per_round", "epochs_per_round", "batch_size")
    for name in (*budgets, "beta_rampdown_rounds", "hidden_size", "subsample_frequency"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if not 0 <= args.beta_decay <= 1:
        sys.exit(f"error: --beta-decay must lie in [0, 1], not {args.beta_decay}.")
    if args.total_timesteps is not None:
        if args.total_timesteps < 1 or args.total_timesteps % args.steps_per_round:
            sys.exit(f"error: --total-timesteps {args.total_timesteps} is not a positive multiple of --steps-per-round.")
        args.rounds = args.total_timesteps // args.steps_per_round
    args.total_timesteps = args.rounds * args.steps_per_round
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
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
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if not discrete and not isinstance(env.action_space, gym.spaces.Box):
        sys.exit(f"error: dagger.py supports Discrete and Box actions, but {args.env_id} has {env.action_space}.")
    keys = ("observations", "actions")  # what DAgger reads of demos.npz
    info, demos = load_expert(
        expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, keys, args.any_env
    )
    expert = load_expert_policy(expert_dir, info, device)
    obs_dim = int(np.prod(env.observation_space.shape))
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    # the learner sees observations standardized with the demo statistics; constant features are left unscaled
    demo_obs = demos["observations"].reshape(len(demos["observations"]), obs_dim).astype(np.float32)
    obs_mean, obs_std = demo_obs.mean(0), demo_obs.std(0)
    obs_std = np.where(obs_std > 1e-6, obs_std, 1.0)
    policy = Policy(obs_mean, obs_std, env.action_space, args.hidden_size).to(device)
    low, high = (None, None) if discrete else (env.action_space.low, env.action_space.high)
    tolerance = None if discrete else torch.as_tensor(args.agreement_tolerance * (high - low) / 2, device=device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)

    # D, preallocated for the demos plus every rollout step: row k of the two tensors is the pair (s_k, pi*(s_k))
    dataset_size, capacity = len(demo_obs), len(demo_obs) + args.total_timesteps
    dataset_obs = torch.zeros(capacity, obs_dim, device=device)
    action_dtype = torch.long if discrete else torch.float32
    dataset_actions = torch.zeros((capacity, *env.action_space.shape), dtype=action_dtype, device=device)
    dataset_obs[:dataset_size] = torch.as_tensor(demo_obs, device=device)
    dataset_actions[:dataset_size] = torch.as_tensor(demos["actions"], dtype=action_dtype, device=device)
    learner_actions = torch.zeros_like(dataset_actions[: args.steps_per_round])

    @torch.no_grad()
    def act_deterministic(obs):
        return policy.deterministic_action(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

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

    def train_round(round_index, global_step, beta, **stats):
        """Alg. 3.1: train pi_hat_{i+1} on all of D; one line (and wandb) of the round's statistics."""
        data = dataset_obs[:dataset_size], dataset_actions[:dataset_size]
        loss = train_policy(policy, optimizer, *data, args.epochs_per_round, args.batch_size, args.min_updates_per_round)
        if not torch.isfinite(loss):
            sys.exit(f"error: non-finite BC loss in round {round_index}; lower --learning-rate.")
        stats = {"beta": beta, "dataset_size": dataset_size, "bc_loss": loss, **stats}
        line = ", ".join(f"{key} {value if isinstance(value, int) else f'{value:.4f}'}" for key, value in stats.items())
        tqdm.write(f"round {round_index}/{args.rounds}: {line}")
        if args.track:
            wandb.log({f"charts/{key}": float(value) for key, value in stats.items()}, step=global_step)

    # Alg. 3.1 initialisation: D = the expert demos (beta_1 = 1), pi_hat_1 trained on them
    start_time, eval_rows, precision = time.time(), [], "fp32"
    train_round(0, 0, 1.0)
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    for global_step in range(1, args.total_timesteps + 1):
        round_index, step_in_round = (global_step - 1) // args.steps_per_round + 1, (global_step - 1) % args.steps_per_round
        if step_in_round == 0:
            # Alg. 3.1: pi_i = beta_i pi* + (1 - beta_i) pi_hat_i, rolled out as fresh trajectories each round
            beta = beta_schedule(round_index, args.beta_schedule, args.beta_rampdown_rounds, args.beta_decay)
            obs, _ = env.reset(seed=args.seed if round_index == 1 else None)
            expert_steps = 0
        with torch.no_grad():
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(1, obs_dim)
            expert_action, learner_action = expert(obs_tensor)[0], policy.deterministic_action(obs_tensor)[0]
        # Alg. 3.1: D_i = {(s, pi*(s))} for every state pi_i visits, whichever policy acts there
        dataset_obs[dataset_size + step_in_round] = obs_tensor[0]
        dataset_actions[dataset_size + step_in_round] = expert_action
        learner_actions[step_in_round] = learner_action
        # the mixture draws its policy per step, so a round's states interpolate between pi*'s and pi_hat_i's
        expert_acts = random.random() < beta
        expert_steps += expert_acts
        action = (expert_action if expert_acts else learner_action).cpu().numpy()
        obs, _, terminated, truncated, step_info = env.step(action)
        if terminated or truncated:
            if args.track:
                episode = step_info["episode"]
                wandb.log({"charts/episodic_return": episode["r"], "charts/episodic_length": episode["l"]}, step=global_step)
            obs, _ = env.reset()

        if step_in_round == args.steps_per_round - 1:
            # pi_hat_i's agreement with pi* on the states of its own round, measured before training on them
            round_expert_actions = dataset_actions[dataset_size : dataset_size + args.steps_per_round]
            stats = {"expert_agreement": expert_agreement(learner_actions, round_expert_actions, tolerance)}
            if not discrete:
                stats["expert_action_mse"] = (learner_actions - round_expert_actions).pow(2).sum(-1).mean()
            stats["expert_share"] = expert_steps / args.steps_per_round  # of executed actions: ~beta_i
            dataset_size += args.steps_per_round  # Alg. 3.1: D <- D u D_i
            train_round(round_index, global_step, beta, **stats)
        progress.update(1)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            run_evaluation(global_step)
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = args.total_timesteps / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, device, precision)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
