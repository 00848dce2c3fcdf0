"""ILPO: Imitating Latent Policies from Observation, a policy over latent actions learned offline, remapped online.

ILPO (Edwards, Sahni, Schroecker, Isbell 2019, arXiv 1805.07914) imitates from state-only demonstrations in two
steps. Step 1, offline on the demos (Sec. 4.1): an encoder E(s) and a generator G(E(s), z) predict the state change
Delta = s' - s for each of K discrete latent actions z; G is trained on the best of its K guesses,
L_min = E[min_z ||Delta - G(E(s), z)||^2] (`min_loss`), so each latent comes to stand for one kind of transition, and
a latent policy pi_omega(z|s) on E(s) is trained so that its expected prediction matches the expert's transition,
L_exp = E[||Delta - sum_z pi_omega(z|s) G(E(s), z)||^2] (`expected_loss`), with G held fixed there (the gradient
reaches pi_omega and E only, as in the authors' code); the two losses are minimised together. Step 2, online
(Sec. 4.2): the agent acts greedily in latent space, z* = argmax_z pi_omega(z|s), and an action remapping network
pi_xi(a | s, z) turns z* into a real action, epsilon-greedily (`--exploration-epsilon` random actions). From each
transition it observes it infers the latent that best explains it, z_t = argmin_z ||Delta_t - G(E(s_t), z)||
(`infer_latent`), and trains pi_xi by cross-entropy to predict the action it took from (s_t, z_t) (`remap_loss`);
E, G and pi_omega stay fixed, as in the authors' code. Discrete actions only, as in the paper; K defaults to the number
of real actions. Observations are standardised with the demos' mean and std, and Delta is measured per dimension in
units of its standard deviation over the demos, so that no state dimension dominates the distances (the authors' code
uses raw states). eval.csv's global_step counts environment steps of step 2; step 1 runs before step 0, and wall_time
includes it. Evaluation is greedy: a = argmax_a pi_xi(a | s, argmax_z pi_omega(z|s)).
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
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

DEMO_KEYS = ("observations", "next_observations")  # what ILPO reads of demos.npz: never actions (state-only imitation)


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
    total_timesteps: int = 5_000
    """environment steps of step 2, the online action remapping (step 1 never steps the env)"""
    eval_frequency: int = 500
    """evaluate the greedy policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_frequency: int = 100
    """the training statistics (losses, SPS) go to the log every this many steps"""
    expert_path: Optional[str] = None
    """folder of the expert artefacts (default: experts/<env-id>/ next to cleanil/)"""
    num_expert_trajectories: int = 10
    """number of expert demo episodes to imitate (the first ones of demos.npz)"""
    subsample_frequency: int = 1
    """keep every k-th expert transition, with a random offset per trajectory"""
    any_env: bool = False
    """use an expert folder recorded on another env id (e.g. Hopper-v4 demos for Hopper-v5) when its shapes fit"""

    # step 1: latent policy and latent forward model, offline on the demos
    num_latent_actions: Optional[int] = None
    """K, the number of latent actions z (default: the number of real actions)"""
    latent_gradient_steps: int = 5_000
    """gradient steps of step 1 on L_min + L_exp"""
    latent_batch_size: int = 256
    """expert transitions per step-1 gradient step"""
    latent_learning_rate: float = 1e-3
    """the learning rate of step 1's Adam optimizer (encoder, generator and latent policy)"""
    hidden_size: int = 128
    """width of the hidden layers (the encoding E(s), the latent embedding and the generator's first layer are twice as
    wide, as in the authors' vector model; the remapping network is this wide throughout)"""

    # step 2: action remapping by interaction
    exploration_epsilon: float = 0.2
    """probability of a uniformly random action instead of the remapped greedy latent action (the authors' code: 0.2)"""
    remap_learning_rate: float = 2e-3
    """the learning rate of the remapping network's Adam optimizer (the authors' code: 2e-3)"""
    remap_batch_size: int = 32
    """transitions per remapping gradient step, drawn from all the agent's transitions so far"""
    remap_updates_per_step: int = 1
    """remapping gradient steps after each environment step"""
    normalize_observations: bool = True
    """standardise observations with the expert demos' mean and std, and Delta with the std of the demos' s' - s"""


# ----------------------------------------------------------------------------------------------------------- ILPO
class LatentModel(nn.Module):
    """Step 1's networks on standardised observations: the encoder E(s), the latent policy pi_omega(z|s) on E(s), and
    the generator G(E(s), z) of Delta for every z at once; leaky ReLUs (slope 0.2) and a learned embedding of z
    concatenated to E(s), as in the authors' vector model."""

    def __init__(self, obs_dim, num_latent_actions, hidden_size):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(obs_dim, hidden_size), nn.LeakyReLU(0.2), nn.Linear(hidden_size, 2 * hidden_size), nn.LeakyReLU(0.2)
        )
        self.latent_policy = nn.Linear(2 * hidden_size, num_latent_actions)
        self.latent_embedding = nn.Sequential(nn.Embedding(num_latent_actions, 2 * hidden_size), nn.LeakyReLU(0.2))
        self.generator = nn.Sequential(
            nn.Linear(4 * hidden_size, 2 * hidden_size),
            nn.LeakyReLU(0.2),
            nn.Linear(2 * hidden_size, hidden_size),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_size, obs_dim),
        )
        self.register_buffer("latents", torch.arange(num_latent_actions))

    def forward(self, obs):
        """Latent policy logits [B, K] and predictions G(E(s), z) of Delta for every latent z [B, K, obs_dim]."""
        encoding = self.encoder(obs)
        z = self.latent_embedding(self.latents)
        pairs = torch.cat([encoding[:, None].expand(-1, len(z), -1), z[None].expand(len(obs), -1, -1)], -1)
        return self.latent_policy(encoding), self.generator(pairs)

    def latent_logits(self, obs):
        return self.latent_policy(self.encoder(obs))


class RemapNetwork(nn.Module):
    """pi_xi(a | s, z): logits over real actions from a standardised observation and a latent action, with its own
    encoder of s (the authors' code does not reuse E) and an embedding of z."""

    def __init__(self, obs_dim, num_latent_actions, num_actions, hidden_size):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(obs_dim, hidden_size), nn.LeakyReLU(0.2), nn.Linear(hidden_size, hidden_size), nn.LeakyReLU(0.2)
        )
        self.latent_embedding = nn.Sequential(nn.Embedding(num_latent_actions, hidden_size), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(
            nn.Linear(2 * hidden_size, hidden_size), nn.LeakyReLU(0.2), nn.Linear(hidden_size, num_actions)
        )

    def forward(self, obs, z):
        return self.head(torch.cat([self.encoder(obs), self.latent_embedding(z)], -1))


def prediction_errors(predictions, delta):
    """||Delta - G(E(s), z)||^2 for every latent z: [B, K]."""
    return ((predictions - delta[:, None]) ** 2).sum(-1)


def min_loss(predictions, delta):
    """Sec. 4.1, L_min = E[min_z ||Delta - G(E(s), z)||^2]: only the best latent's prediction is pulled towards the
    transition, so the K latents split the demonstrated transitions among themselves."""
    return prediction_errors(predictions, delta).min(-1).values.mean()


def expected_loss(latent_logits, predictions, delta):
    """Sec. 4.1, L_exp = E[||Delta - sum_z pi_omega(z|s) G(E(s), z)||^2] with G held fixed (detached): it trains the
    latent policy (and E) to weight the latent whose outcome the expert produced, not G to fit the mixture."""
    expected = (F.softmax(latent_logits, -1)[..., None] * predictions.detach()).sum(1)
    return ((expected - delta) ** 2).sum(-1).mean()


def infer_latent(predictions, delta):
    """Sec. 4.2, z_t = argmin_z ||Delta_t - G(E(s_t), z)||: the latent action that best explains an observed transition."""
    return prediction_errors(predictions, delta).argmin(-1)


def remap_loss(remap_logits, actions):
    """Sec. 4.2: cross-entropy -log pi_xi(a_t | s_t, z_t) of the real action taken, given the inferred latent."""
    return F.cross_entropy(remap_logits, actions)


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
    budgets = ("total_timesteps", "eval_frequency", "eval_episodes", "log_frequency", "latent_batch_size", "remap_batch_size")
    for name in (*budgets, "hidden_size", "subsample_frequency"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if not 0 <= args.exploration_epsilon <= 1 or args.latent_gradient_steps < 0 or args.remap_updates_per_step < 0:
        sys.exit("error: --exploration-epsilon must lie in [0, 1], --latent-gradient-steps and --remap-updates-per-step >= 0.")
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
    if not isinstance(env.action_space, gym.spaces.Discrete):
        sys.exit(
            f"error: ilpo.py needs discrete actions (its latent actions are remapped to a finite set of real ones, as in "
            f"the paper), but {args.env_id} has {env.action_space}; for continuous control use bco.py or gaifo.py."
        )
    num_actions = int(env.action_space.n)
    num_latent_actions = num_actions if args.num_latent_actions is None else args.num_latent_actions
    if num_latent_actions < 1:
        sys.exit(f"error: --num-latent-actions must be positive, got {num_latent_actions}.")
    info, demos = load_expert(
        expert_dir, eval_env, args.num_expert_trajectories, args.subsample_frequency, args.seed, DEMO_KEYS, args.any_env
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), name=run_name, save_code=True)

    to_tensor = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device).flatten(1)  # a batch of flat observations
    obs_demo, next_obs_demo = to_tensor(demos["observations"]), to_tensor(demos["next_observations"])
    obs_dim = obs_demo.shape[1]
    # +1e-3 keeps constant dims (e.g. a pinned joint, or one the actions never change) from blowing up, as TD3+BC does
    obs_mean, obs_std, delta_std = obs_demo.mean(0), obs_demo.std(0) + 1e-3, (next_obs_demo - obs_demo).std(0) + 1e-3
    if not args.normalize_observations:
        ones = torch.ones(obs_dim, device=device)
        obs_mean, obs_std, delta_std = torch.zeros_like(ones), ones, ones
    normalize = lambda obs: (to_tensor(obs) - obs_mean) / obs_std
    state_change = lambda obs, next_obs: (to_tensor(next_obs) - to_tensor(obs)) / delta_std  # Delta in units of its demo std

    latent_model = LatentModel(obs_dim, num_latent_actions, args.hidden_size).to(device)
    latent_optimizer = torch.optim.Adam(latent_model.parameters(), lr=args.latent_learning_rate)
    remap = RemapNetwork(obs_dim, num_latent_actions, num_actions, args.hidden_size).to(device)
    remap_optimizer = torch.optim.Adam(remap.parameters(), lr=args.remap_learning_rate)
    s_demo, delta_demo = normalize(obs_demo), state_change(obs_demo, next_obs_demo)
    # the agent's transitions as step 2 trains on them: standardised s, the action taken, the latent inferred
    b_obs = torch.zeros(args.total_timesteps, obs_dim, device=device)
    b_actions = torch.zeros(args.total_timesteps, dtype=torch.long, device=device)
    b_latents = torch.zeros(args.total_timesteps, dtype=torch.long, device=device)

    @torch.no_grad()
    def act_greedy(obs):
        """a = argmax_a pi_xi(a | s, z*), z* = argmax_z pi_omega(z|s)."""
        s = normalize(obs)
        return remap(s, latent_model.latent_logits(s).argmax(-1)).argmax(-1).cpu().numpy()

    def run_evaluation(global_step):
        returns = evaluate(act_greedy, eval_env, args.eval_episodes, args.seed + 10_000)
        mean, wall_time = float(returns.mean()), time.time() - start_time
        row = dict(global_step=global_step, eval_return_mean=mean, eval_return_std=float(returns.std()))
        row.update(normalized_score=normalized_score(mean, info), wall_time=wall_time, sps=global_step / max(wall_time, 1e-9))
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        if args.track:
            wandb.log({"eval/return": mean, "eval/normalized_score": row["normalized_score"]}, step=global_step)
        progress.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{mean:.1f}")

    start_time, eval_rows, precision = time.time(), [], "fp32"
    # step 1 (Sec. 4.1): latent forward model and latent policy, offline on the demonstrated transitions
    for _ in range(args.latent_gradient_steps):
        index = torch.randint(0, len(s_demo), (args.latent_batch_size,), device=device)
        latent_logits, predictions = latent_model(s_demo[index])
        generator_loss = min_loss(predictions, delta_demo[index])
        policy_loss = expected_loss(latent_logits, predictions, delta_demo[index])
        latent_optimizer.zero_grad(set_to_none=True)
        (generator_loss + policy_loss).backward()
        latent_optimizer.step()
    with torch.no_grad():
        latent_logits, predictions = latent_model(s_demo)
        generator_loss = min_loss(predictions, delta_demo).item()
        policy_loss = expected_loss(latent_logits, predictions, delta_demo).item()
        # how the demonstrated transitions split among the latents, and how often the latent policy picks the latent
        # that explains the expert's transition (an imitation accuracy in latent space)
        demo_latents = infer_latent(predictions, delta_demo)
        latent_usage = torch.bincount(demo_latents, minlength=num_latent_actions).float() / len(demo_latents)
        latent_policy_accuracy = (latent_logits.argmax(-1) == demo_latents).float().mean().item()
    if not np.isfinite([generator_loss, policy_loss]).all():
        sys.exit(f"error: non-finite step-1 loss (L_min {generator_loss}, L_exp {policy_loss}); lower --latent-learning-rate.")
    tqdm.write(
        f"step 1: {args.latent_gradient_steps} gradient steps, L_min {generator_loss:.4f}, L_exp {policy_loss:.4f}, "
        f"demo transitions per latent {[round(float(u), 3) for u in latent_usage]}, latent policy accuracy "
        f"{latent_policy_accuracy:.3f}"
    )
    if args.track:
        stats = {"losses/min_loss": generator_loss, "losses/expected_loss": policy_loss}
        wandb.log({**stats, "charts/latent_policy_accuracy": latent_policy_accuracy}, step=0)

    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress = tqdm(total=args.total_timesteps, file=sys.stderr, desc=run_name, mininterval=2.0)
    run_evaluation(0)
    # step 2 (Sec. 4.2): remap latent actions to real ones by interaction
    obs, _ = env.reset(seed=args.seed)
    remap_loss_value, agreement = torch.zeros((), device=device), torch.zeros((), device=device)
    for global_step in range(1, args.total_timesteps + 1):
        action = env.action_space.sample() if random.random() < args.exploration_epsilon else act_greedy(obs[None])[0]
        next_obs, _, terminated, truncated, step_info = env.step(action)
        with torch.no_grad():
            s = normalize(obs[None])
            latent = infer_latent(latent_model(s)[1], state_change(obs[None], next_obs[None]))
        b_obs[global_step - 1], b_actions[global_step - 1], b_latents[global_step - 1] = s[0], int(action), latent[0]
        obs = next_obs
        if terminated or truncated:
            if args.track:
                wandb.log({"charts/episodic_return": step_info["episode"]["r"]}, step=global_step)
            obs, _ = env.reset()

        if global_step >= args.remap_batch_size:
            for _ in range(args.remap_updates_per_step):
                index = torch.randint(0, global_step, (args.remap_batch_size,), device=device)
                logits = remap(b_obs[index], b_latents[index])
                loss = remap_loss(logits, b_actions[index])
                remap_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                remap_optimizer.step()
                remap_loss_value = loss.detach()
                agreement = (logits.argmax(-1) == b_actions[index]).float().mean()
        progress.update(1)
        if args.track and global_step % args.log_frequency == 0:
            stats = {"losses/remap_loss": remap_loss_value.item(), "charts/remap_accuracy": agreement.item()}
            wandb.log({**stats, "charts/SPS": global_step / (time.time() - start_time)}, step=global_step)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            if not torch.isfinite(remap_loss_value):
                sys.exit(f"error: non-finite remapping loss at step {global_step}; lower --remap-learning-rate.")
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
