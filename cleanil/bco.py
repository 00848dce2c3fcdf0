"""BCO: Behavioral Cloning from Observation, BC on expert actions inferred by a learned inverse dynamics model.

BCO (Torabi, Warnell, Stone 2018, arXiv 1805.01954) imitates from state-only demonstrations: the agent learns from its
own (s, a, s') an inverse dynamics model M_theta(a | s, s'), labels each demonstrated transition (s, s') with
a~ = argmax_a M_theta(a | s, s'), and clones the expert on (s, a~). Alg. 1, BCO(alpha), in this file:
  pi_phi: a random policy; I = |I_pre|          the first iteration acts uniformly at random for --pre-demo-steps
  while policy improvement:                     iterations until --total-timesteps environment steps are spent
    run pi_phi for I steps, append (s, s', a)   `sample_action` (a ~ pi_phi, not its mode: M_theta needs varied a)
    improve M_theta on all (s, s', a) so far    `fit` (maximum likelihood), scored on held-out steps
    infer A~_demo with M_theta from (s, s')     `infer_actions` over every demonstrated transition
    improve pi_phi by BC on (S_demo, A~_demo)   `fit` (`bc_loss`), continuing from the previous pi_phi
    I = alpha |I_pre|                           --alpha 0 is BCO(0): one iteration, no post-demonstration interaction
M_theta and pi_phi are bc.py's `Policy` (copied). eval.csv's global_step counts all environment steps, I_pre's included.
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

DEMO_KEYS = ("observations", "next_observations")  # what BCO reads of demos.npz: never actions (state-only imitation)


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
    """whether to capture videos of the agent performances (check out `videos` folder)"""
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 10_000
    """environment steps in all: --pre-demo-steps, then iterations of alpha * pre_demo_steps steps until it is spent"""
    eval_frequency: int = 2_000
    """evaluate the deterministic policy after the first iteration that crosses each multiple of this many environment steps"""
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
    pre_demo_steps: int = 5_000
    """|I_pre|: environment steps of the random policy before the demonstration, which the inverse model learns from"""
    alpha: float = 0.1
    """BCO(alpha): each post-demonstration iteration runs the current policy for alpha * pre_demo_steps steps (0: BCO(0))"""
    holdout_fraction: float = 0.1
    """fraction of each iteration's interaction kept out of the inverse model's training to measure its accuracy or error"""
    inverse_gradient_steps: int = 2_000
    """gradient steps on the inverse model per iteration (continuing from the previous iteration's model)"""
    policy_gradient_steps: int = 2_000
    """gradient steps of behavioral cloning per iteration (continuing from the previous iteration's policy)"""
    policy: Literal["gaussian", "mixture"] = "gaussian"
    """continuous actions: the policy is a diagonal Gaussian or a mixture of them (the inverse model is a Gaussian)"""
    num_components: int = 5
    """number of mixture components K of `--policy mixture`"""
    batch_size: int = 256
    """transitions per gradient step, of the inverse model and of the policy"""
    learning_rate: float = 1e-3
    """the learning rate of the Adam optimizers of the inverse model and of the policy"""
    hidden_size: int = 256
    """width of the two hidden layers of the inverse model and of the policy"""
    log_std_min: float = -5.0
    """lower bound of the log standard deviation of the Gaussian (components), in the [-1, 1]-rescaled action space"""
    log_std_max: float = 2.0
    """upper bound of the log standard deviation of the Gaussian (components)"""
    nll_beta: float = 0.5
    """Gaussian heads: beta of the beta-NLL (Seitzer et al. 2022) of M_theta and pi_phi (0: plain maximum likelihood)"""
    normalize_observations: bool = True
    """standardise pi_phi's inputs with the demos' statistics, M_theta's with the pre-demonstration data's"""


# ------------------------------------------------------------------------------------------------------------ BCO
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


def fit(model, optimizer, inputs, targets, steps, batch_size, nll_beta=0.0):
    """Alg. 1's modelLearning and behavioral cloning alike: Adam steps on `bc_loss` of random minibatches; the last loss."""
    for _ in range(steps):
        index = torch.randint(0, len(inputs), (batch_size,), device=inputs.device)
        loss = bc_loss(model, inputs[index], targets[index], nll_beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def inverse_model_inputs(obs, next_obs):
    """M_theta's input for (s, s'): s and s' - s side by side, the information of (s, s') with the action's effect not
    buried in the small difference of two large inputs."""
    return torch.cat([obs, next_obs - obs], -1)


def infer_actions(inverse_model, inputs):
    """a~ = argmax_a M_theta(a | s, s'): the most probable class, or the Gaussian's mean (clipped to the bounds)."""
    return inverse_model.deterministic_action(inputs)


@torch.no_grad()
def sample_action(policy, obs):
    """a ~ pi_phi(.|s) in env units: a class, or a Gaussian draw (of a component drawn by its weight) clipped to [-1, 1]."""
    params = policy(obs)
    if policy.head == "categorical":
        return torch.distributions.Categorical(logits=params[0]).sample()
    mean, log_std = params[-2:]  # [B, D], or [B, K, D] for the mixture
    if policy.head == "mixture":
        rows, k = torch.arange(len(obs), device=obs.device), torch.distributions.Categorical(logits=params[0]).sample()
        mean, log_std = mean[rows, k], log_std[rows, k]
    return (mean + log_std.exp() * torch.randn_like(mean)).clamp(-1, 1) * policy.action_scale + policy.action_bias


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
    budgets = ("total_timesteps", "eval_frequency", "eval_episodes", "pre_demo_steps", "inverse_gradient_steps")
    for name in (*budgets, "policy_gradient_steps", "batch_size", "num_components", "hidden_size", "subsample_frequency"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.total_timesteps < args.pre_demo_steps or args.alpha < 0 or not 0 <= args.holdout_fraction < 1:
        sys.exit("error: BCO needs --total-timesteps >= --pre-demo-steps, --alpha >= 0 and 0 <= --holdout-fraction < 1.")
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
    space, discrete = env.action_space, isinstance(env.action_space, gym.spaces.Discrete)
    if not discrete and not (isinstance(space, gym.spaces.Box) and np.isfinite([space.low, space.high]).all()):
        sys.exit(f"error: bco.py needs Discrete actions or a Box with finite bounds, but {args.env_id} has {space}.")
    info, demos = load_expert(
        expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, DEMO_KEYS, args.any_env
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    to_tensor = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device).flatten(1)  # a batch of flat observations
    obs_demo, next_obs_demo = to_tensor(demos["observations"]), to_tensor(demos["next_observations"])
    obs_dim, demo_inputs = obs_demo.shape[1], inverse_model_inputs(obs_demo, next_obs_demo)
    obs_mean, obs_std = obs_demo.mean(0), obs_demo.std(0) + 1e-3  # +1e-3: constant dims (a pinned joint), as in TD3+BC
    if not args.normalize_observations:
        obs_mean, obs_std = torch.zeros(obs_dim), torch.ones(obs_dim)
    head, log_std_range = "categorical" if discrete else args.policy, (args.log_std_min, args.log_std_max)
    policy = Policy(head, obs_mean, obs_std, space, args.hidden_size, args.num_components, log_std_range).to(device)
    policy_optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    # the agent's transitions as M_theta reads them (Alg. 1's T^a and A), and which of them are held out
    b_inputs = torch.zeros(args.total_timesteps, 2 * obs_dim, device=device)
    b_actions = torch.zeros((args.total_timesteps, *space.shape), dtype=torch.long if discrete else torch.float, device=device)
    b_held_out = torch.zeros(args.total_timesteps, dtype=torch.bool, device=device)

    @torch.no_grad()
    def run_evaluation(global_step):
        act = lambda obs: policy.deterministic_action(to_tensor(obs)).cpu().numpy().reshape((len(obs), *space.shape))
        returns = evaluate(act, eval_env, args.eval_episodes, args.seed + 10_000)
        mean, wall_time = float(returns.mean()), time.time() - start_time
        row = dict(global_step=global_step, eval_return_mean=mean, eval_return_std=float(returns.std()))
        row.update(normalized_score=normalized_score(mean, info), wall_time=wall_time, sps=global_step / max(wall_time, 1e-9))
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        if args.track:
            wandb.log({"eval/return": mean, "eval/normalized_score": row["normalized_score"]}, step=global_step)
        progress.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{mean:.1f}")

    start_time, eval_rows, precision = time.time(), [], "fp32"
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    obs, _ = env.reset(seed=args.seed)
    global_step, iteration, done, post_demo_steps = 0, 0, False, max(1, round(args.alpha * args.pre_demo_steps))
    batch_size, nll_beta = args.batch_size, args.nll_beta
    explore = lambda obs: sample_action(policy, to_tensor(obs[None]))[0].cpu().numpy().reshape(space.shape)  # a ~ pi_phi
    while not done:
        iteration, iteration_start = iteration + 1, global_step
        # Alg. 1: run pi_phi (at first a uniformly random policy) for I steps, appending (s, s') and a
        num_steps = args.pre_demo_steps if iteration == 1 else min(post_demo_steps, args.total_timesteps - global_step)
        for _ in range(num_steps):
            action = space.sample() if iteration == 1 else explore(obs)
            next_obs, _, terminated, truncated, _ = env.step(action)
            b_inputs[global_step] = inverse_model_inputs(to_tensor(obs[None]), to_tensor(next_obs[None]))[0]
            b_actions[global_step] = torch.as_tensor(action)
            obs, global_step = next_obs, global_step + 1
            progress.update(1)
            if terminated or truncated:
                obs, _ = env.reset()
        # a fixed share of each iteration's steps, drawn at random, never trains M_theta
        b_held_out[torch.randperm(num_steps, device=device)[: int(args.holdout_fraction * num_steps)] + iteration_start] = True
        held_out = b_held_out[:global_step]
        agent_data = b_inputs[:global_step][~held_out], b_actions[:global_step][~held_out]
        held_out_data = b_inputs[:global_step][held_out], b_actions[:global_step][held_out]
        if iteration == 1:  # M_theta, on inputs standardised with the pre-demonstration data's statistics
            input_mean, input_std = agent_data[0].mean(0), agent_data[0].std(0) + 1e-3
            if not args.normalize_observations:
                input_mean, input_std = torch.zeros(2 * obs_dim), torch.ones(2 * obs_dim)
            inverse_head = "categorical" if discrete else "gaussian"
            inverse_model = Policy(inverse_head, input_mean, input_std, space, args.hidden_size, 1, log_std_range).to(device)
            inverse_optimizer = torch.optim.Adam(inverse_model.parameters(), lr=args.learning_rate)

        # Alg. 1: improve M_theta on all the agent's transitions so far, infer the demos' actions, improve pi_phi by BC
        inverse_loss = fit(inverse_model, inverse_optimizer, *agent_data, args.inverse_gradient_steps, batch_size, nll_beta)
        with torch.no_grad():
            inferred_actions = infer_actions(inverse_model, demo_inputs)
            held_out_error = infer_actions(inverse_model, held_out_data[0]) - held_out_data[1]
        loss = fit(policy, policy_optimizer, obs_demo, inferred_actions, args.policy_gradient_steps, batch_size, nll_beta)
        if not np.isfinite([inverse_loss, loss]).all():
            sys.exit(f"error: non-finite loss (M_theta {inverse_loss}, BC {loss}); lower --learning-rate.")
        # M_theta's accuracy, or mean absolute error in env units, on the held-out steps (NaN for --holdout-fraction 0)
        score = ((held_out_error == 0).float() if discrete else held_out_error.abs()).mean().item()
        score_name = "held-out inverse model " + ("accuracy" if discrete else "mae")
        stats = {score_name: score, "inverse model loss": inverse_loss, "BC loss": loss}
        tqdm.write(f"iteration {iteration}, step {global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in stats.items()))
        if args.track:
            wandb.log({f"charts/{key.replace(' ', '_')}": value for key, value in stats.items()}, step=global_step)
        done = args.alpha == 0 or global_step >= args.total_timesteps
        if global_step // args.eval_frequency > iteration_start // args.eval_frequency or done:
            run_evaluation(global_step)
    progress.close()

    wall_time = time.time() - start_time
    mean_sps = global_step / max(wall_time, 1e-9)
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, device, precision)
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
