"""Behavioral cloning: supervised maximum likelihood on expert (state, action) pairs.

BC (Pomerleau 1989, ALVINN; analysed by Ross & Bagnell 2010, AISTATS) fits a policy pi_theta to the expert's
demonstrations by maximum likelihood, theta* = argmax_theta sum_i log pi_theta(a_i | s_i) (`bc_loss`), without stepping
the env. `Policy` heads: a categorical over discrete actions (`categorical_log_prob`); for continuous actions a
diagonal Gaussian (`--policy gaussian`, `gaussian_log_prob`), fitted by default with the beta-NLL of Seitzer et al. 2022
(arXiv 2203.09168, `--nll-beta 0.5`) that keeps the mean fitted where the variance is large, or a mixture of K diagonal
Gaussians (`--policy mixture`, `mixture_log_prob`: log sum_k w_k N(a; mu_k, sigma_k), the mixture density network of
Bishop 1994 as used by robomimic, Mandlekar et al. 2021, arXiv 2108.03298), which can put its mass on several modes of a
multimodal expert instead of averaging them. Observations are standardised with the demos' mean and std, continuous
actions fitted in the action space rescaled to [-1, 1]. `--total-timesteps` counts gradient steps (minibatches of
`--batch-size`), the global_step and sps of eval.csv. Evaluation is deterministic: the argmax, the Gaussian mean, or the
mean of the mixture's most probable component.
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
    total_timesteps: int = 10_000
    """gradient steps of behavioral cloning (BC never steps the env while training; this is eval.csv's global_step)"""
    eval_frequency: int = 1_000
    """evaluate the deterministic policy every this many gradient steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_frequency: int = 100
    """the training statistics (loss, SPS) go to wandb every this many steps"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 10
    """number of expert demo episodes to clone (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory"""
    any_env: bool = False
    """use an expert folder recorded on another env id (e.g. Hopper-v4 demos for Hopper-v5) when its shapes fit"""

    # BC
    policy: Literal["gaussian", "mixture"] = "gaussian"
    """continuous actions only: a diagonal Gaussian, or a mixture of `num_components` diagonal Gaussians"""
    num_components: int = 5
    """number of mixture components K of `--policy mixture`"""
    batch_size: int = 256
    """expert transitions per gradient step"""
    learning_rate: float = 1e-3
    """the learning rate of the Adam optimizer"""
    hidden_size: int = 256
    """width of the two hidden layers of the policy"""
    log_std_min: float = -5.0
    """lower bound of the log standard deviation of the Gaussian (components), in the [-1, 1]-rescaled action space"""
    log_std_max: float = 2.0
    """upper bound of the log standard deviation of the Gaussian (components)"""
    normalize_observations: bool = True
    """standardise observations with the expert demos' mean and std"""
    nll_beta: float = 0.5
    """`--policy gaussian`: beta of the beta-NLL, each dim's NLL weighted by stopgrad(sigma^(2 beta)); 0: plain likelihood"""


# -------------------------------------------------------------------------------------------- behavioural cloning
class Policy(nn.Module):
    """MLP on standardised observations with a categorical, Gaussian or Gaussian-mixture head. Continuous actions are
    modelled in the rescaled space u = (a - action_bias) / action_scale, [-1, 1] on the env's bounds; their
    log-likelihoods differ from the raw-action ones by the constant sum(log action_scale)."""

    def __init__(self, head, obs_mean, obs_std, action_space, hidden_size, num_components=1, log_std_range=(-5.0, 2.0)):
        super().__init__()
        discrete = isinstance(action_space, gym.spaces.Discrete)
        self.head, self.num_components, (self.log_std_min, self.log_std_max) = head, num_components, log_std_range
        self.action_dim = D = int(action_space.n) if discrete else int(np.prod(action_space.shape))
        out_dim = {"categorical": D, "gaussian": 2 * D, "mixture": num_components * (1 + 2 * D)}[head]
        self.network = nn.Sequential(
            nn.Linear(len(obs_mean), hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, out_dim),
        )
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))
        low, high = (np.zeros(0), np.zeros(0)) if discrete else (action_space.low, action_space.high)
        self.register_buffer("action_scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def forward(self, obs):
        """Categorical: logits [B, A]. Gaussian: mean, log_std [B, D]. Mixture: logits [B, K], means, log_stds [B, K, D]."""
        out = self.network((obs - self.obs_mean) / self.obs_std)
        if self.head == "categorical":
            return (out,)
        if self.head == "mixture":
            K = self.num_components
            logits, out = out[:, :K], out[:, K:].view(-1, K, 2 * self.action_dim)
        mean, log_std = out.chunk(2, -1)
        # squash log_std into [min, max] smoothly instead of clipping (keeps its gradient alive), as in sac.py
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        return (mean, log_std) if self.head == "gaussian" else (logits, mean, log_std)

    def log_prob(self, obs, actions, nll_beta=0.0):
        """log pi(a|s) of expert actions (class indices, or raw continuous actions); for the Gaussian head with
        nll_beta > 0, each dim weighted by stopgrad(sigma_d^(2 beta)), the beta-NLL's weights (see `bc_loss`)."""
        params = self(obs)
        if self.head == "categorical":
            return categorical_log_prob(*params, actions)
        actions = (actions - self.action_bias) / self.action_scale
        if self.head == "mixture":
            return mixture_log_prob(*params, actions)
        mean, log_std = params
        return gaussian_log_prob(mean, log_std, actions, (2 * nll_beta * log_std).detach().exp())

    def deterministic_action(self, obs):
        """argmax; the Gaussian mean; the mean of the most probable mixture component (not the mixture mean, which
        would average the expert's modes, the very failure the mixture is there to avoid); clipped to the bounds."""
        params = self(obs)
        if self.head == "categorical":
            return params[0].argmax(-1)
        if self.head == "gaussian":
            mean = params[0]
        else:
            logits, means, _ = params
            mean = means[torch.arange(len(means), device=means.device), logits.argmax(-1)]
        return mean.clamp(-1, 1) * self.action_scale + self.action_bias


def categorical_log_prob(logits, actions):
    """log softmax(logits)[a]."""
    return F.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)


def gaussian_log_prob(mean, log_std, actions, dim_weights=1.0):
    """sum_d w_d log N(a_d; mu_d, sigma_d), a diagonal Gaussian's log density for w = 1."""
    return (dim_weights * (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi))).sum(-1)


def mixture_log_prob(logits, means, log_stds, actions):
    """log sum_k w_k N(a; mu_k, diag sigma_k^2), w = softmax(logits): the mixture density network likelihood (Bishop
    1994), a logsumexp over components so that no component's tiny density underflows to log 0."""
    component_log_prob = gaussian_log_prob(means, log_stds, actions.unsqueeze(-2))  # [B, K]
    return torch.logsumexp(F.log_softmax(logits, -1) + component_log_prob, -1)


def bc_loss(policy, obs, actions, nll_beta=0.0):
    """Maximum likelihood: -1/N sum_i log pi_theta(a_i | s_i) over the expert minibatch.

    For the Gaussian head with nll_beta > 0 it is the beta-NLL of Seitzer et al. 2022 (ICLR, arXiv 2203.09168),
    -1/N sum_i sum_d stopgrad(sigma_id^(2 beta)) log N(a_id; mu_id, sigma_id): under plain maximum likelihood the mean's
    gradient (mu - a) / sigma^2 is largest where sigma is already small, so the mean stays wrong on the hard states;
    beta = 1 gives the mean exactly the squared error's gradient."""
    return -policy.log_prob(obs, actions, nll_beta).mean()


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
    budgets = ("total_timesteps", "eval_frequency", "eval_episodes", "log_frequency", "batch_size", "hidden_size")
    for name in (*budgets, "num_components", "subsample_frequency"):
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
    space = eval_env.action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    if not discrete and not (isinstance(space, gym.spaces.Box) and np.isfinite([space.low, space.high]).all()):
        sys.exit(f"error: bc.py needs Discrete actions or a Box with finite bounds, but {args.env_id} has {space}.")
    keys = ("observations", "actions")  # what BC reads of demos.npz
    info, demos = load_expert(
        expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, keys, args.any_env
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    obs_demo = torch.as_tensor(demos["observations"], dtype=torch.float32, device=device).flatten(1)
    act_demo = torch.as_tensor(demos["actions"], dtype=torch.long if discrete else torch.float32, device=device)
    if args.normalize_observations:
        # +1e-3 keeps constant observation dims (e.g. a pinned joint) from blowing up, as TD3+BC does
        obs_mean, obs_std = obs_demo.mean(0), obs_demo.std(0) + 1e-3
    else:
        obs_mean, obs_std = torch.zeros(obs_demo.shape[1]), torch.ones(obs_demo.shape[1])
    head = "categorical" if discrete else args.policy
    log_std_range = (args.log_std_min, args.log_std_max)
    policy = Policy(head, obs_mean, obs_std, space, args.hidden_size, args.num_components, log_std_range).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)

    @torch.no_grad()
    def act_deterministic(obs):
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1)
        return policy.deterministic_action(obs).cpu().numpy().reshape((len(obs), *space.shape))

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

    start_time, eval_rows, precision = time.time(), [], "fp32"
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    for global_step in range(1, args.total_timesteps + 1):
        index = torch.randint(0, len(obs_demo), (args.batch_size,), device=device)
        loss = bc_loss(policy, obs_demo[index], act_demo[index], args.nll_beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(1)
        if args.track and global_step % args.log_frequency == 0:
            wandb.log(
                {"losses/bc_loss": loss.item(), "charts/SPS": global_step / (time.time() - start_time)}, step=global_step
            )
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            if not torch.isfinite(loss):
                sys.exit(f"error: non-finite BC loss at step {global_step}; lower --learning-rate.")
            run_evaluation(global_step)
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = args.total_timesteps / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, device, precision)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    eval_env.close()
    if args.track:
        wandb.finish()
