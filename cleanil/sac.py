"""Soft Actor-Critic: the continuous-action expert trainer, and the SAC block every SAC-based cleanil script copies.

SAC (Haarnoja, Zhou, Abbeel, Levine 2018, arXiv 1801.01290; Haarnoja et al. 2018b, arXiv 1812.05905) maximises
return plus policy entropy. Twin soft Q-functions with Polyak-averaged targets are regressed on the soft Bellman
target (1812.05905 Eq. 5-6, clipped double-Q as in TD3): `soft_q_loss`; a tanh-squashed Gaussian actor is trained by
the reparameterised objective alpha log pi(a|s) - min Q(s, a) (Eq. 7, with the tanh change of variables of Appendix C,
Eq. 21): `policy_loss`, `Actor.get_action`; the temperature alpha is tuned so the policy entropy tracks -|A| (Eq. 18):
`alpha_loss`. `sac_update` is one step of all three. Follows cleanrl/sac_continuous_action.py (delayed, repeated
actor updates; q_lr 1e-3, policy_lr 3e-4).

At the end the run folder gets policy.pt (the deterministic policy as a plain MLP) and policy.json (its spec and how it
was trained); `python cleanil/demos.py --from-policy runs/<run>` turns them into an expert folder. A long run is
checkpointed every --checkpoint-minutes and when stopped by SIGINT/SIGTERM; `--resume` continues it (the replay buffer
is not saved: `--refill-steps` steps of the current policy refill it). `--bf16` (on where the hardware has it) runs
the hidden layers' matmuls in bfloat16 (mixed precision).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from copy import deepcopy
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
    env_id: str = "Hopper-v4"
    """the id of the environment"""
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment"""
    eval_frequency: int = 10_000
    """evaluate the deterministic policy every this many environment steps"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_frequency: int = 1000
    """the training statistics (losses, SPS) go to wandb every this many steps"""
    expert_path: Optional[str] = None
    """folder whose expert.json normalizes the score (default: experts/<env-id>/ next to cleanil/; none: NaN)"""
    snapshot: Literal["best", "final"] = "best"
    """which actor policy.pt holds: `best` (highest eval return seen, as expert checkpoints are usually picked) or `final`"""

    # SAC (cleanrl/sac_continuous_action.py defaults)
    buffer_size: int = 1_000_000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient (Polyak averaging)"""
    batch_size: int = 256
    """the batch size of samples from the replay memory"""
    learning_starts: int = 5_000
    """environment steps with uniformly random actions before learning starts"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network optimizer"""
    policy_frequency: int = 2
    """the actor is updated every this many steps, this many times (delayed updates as in TD3)"""
    target_network_frequency: int = 1
    """the frequency of updates for the target networks"""
    alpha: float = 0.2
    """entropy regularization coefficient (initial value when autotuned)"""
    autotune: bool = True
    """automatic tuning of the entropy coefficient (Eq. 18)"""
    hidden_size: int = 256
    """width of the two hidden layers of actor and critics"""
    log_std_min: float = -5.0
    """lower bound of the actor's log standard deviation"""
    log_std_max: float = 2.0
    """upper bound of the actor's log standard deviation"""
    bf16: bool = True
    """autocast the hidden layers' matmuls to bfloat16 where the hardware has it (CUDA, CPUs with AMX or AVX512-BF16)"""

    # checkpoints
    checkpoint_minutes: float = 30.0
    """save a checkpoint every this many minutes (0: only when stopped), and when stopped by SIGINT/SIGTERM"""
    checkpoint_dir: str = "checkpoints"
    """folder of the checkpoint file <env-id>__<exp-name>__<seed>.pt (deleted when the run finishes)"""
    resume: bool = False
    """continue the interrupted run from its checkpoint"""
    refill_steps: int = 50_000
    """on --resume, steps of the current policy that refill the replay buffer (not in global_step: refill_env_steps)"""


# ------------------------------------------------------------------------------------------------------------ SAC
class SoftQEnsemble(nn.Module):
    """num_q independent critics Q_k(s, a), evaluated together: each layer is one batched matmul over the critics."""

    def __init__(self, obs_dim, action_dim, hidden_size, num_q=2):
        super().__init__()
        sizes = [obs_dim + action_dim, hidden_size, hidden_size, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / np.sqrt(fan_in)  # nn.Linear's default initialisation, per critic
            self.weights.append(nn.Parameter(torch.empty(num_q, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_q, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, obs, action):
        x = torch.cat([obs, action], -1).expand(len(self.weights[0]), -1, -1)
        for weight, bias in zip(self.weights[:-1], self.biases[:-1]):
            x = F.relu(torch.baddbmm(bias, x, weight))  # bfloat16 under --bf16's autocast
        # the output layer stays float32: Q-values of a few hundred would round to steps of ~1 in bfloat16
        with torch.autocast(x.device.type, enabled=False):
            return torch.baddbmm(self.biases[-1], x.float(), self.weights[-1]).squeeze(-1)  # [num_q, batch]


class Actor(nn.Module):
    def __init__(self, env, hidden_size, log_std_min, log_std_max):
        super().__init__()
        obs_dim, action_dim = np.prod(env.observation_space.shape), np.prod(env.action_space.shape)
        self.fc1 = nn.Linear(obs_dim, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.fc_head = nn.Linear(hidden_size, 2 * action_dim)  # mean and log-std in one matmul
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        high, low = env.action_space.high, env.action_space.low
        self.register_buffer("action_scale", torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((high + low) / 2.0, dtype=torch.float32))
        # the constant part of log pi(a|s): Gaussian normaliser and the affine rescaling's log-determinant
        self.register_buffer("log_prob_offset", 0.5 * np.log(2 * np.pi) * action_dim + torch.log(self.action_scale).sum())

    def forward(self, obs):
        hidden = F.relu(self.fc2(F.relu(self.fc1(obs))))
        # the head stays float32 under --bf16: the mean and log-std feed the log-probabilities
        with torch.autocast(obs.device.type, enabled=False):
            mean, log_std = self.fc_head(hidden.float()).chunk(2, -1)
        # squash log_std into [min, max] smoothly instead of clipping (keeps its gradient alive)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def get_action(self, obs):
        """a = tanh(u) * scale + bias with u = mean + std * eps, eps ~ N(0, I) (reparameterised); log pi(a|s) by Eq. 21."""
        mean, log_std = self(obs)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        # log N(u; mean, std) - log(1 - tanh(u)^2), the latter as 2 (log 2 - u - softplus(-2u)): exact where tanh saturates
        log_prob = -0.5 * eps.square() - log_std - 2 * (np.log(2) - u - F.softplus(-2 * u))
        return torch.tanh(u) * self.action_scale + self.action_bias, log_prob.sum(-1) - self.log_prob_offset

    def deterministic_action(self, obs):
        return torch.tanh(self(obs)[0]) * self.action_scale + self.action_bias


class ReplayBuffer:
    """Transitions as rows [obs, action, reward, next_obs, termination] of one preallocated tensor on the training
    device: a minibatch is one index gather. Checkpoints leave it out (hundreds of MB); --resume refills it."""

    def __init__(self, obs_dim, action_dim, size, device):
        self.widths = (obs_dim, action_dim, 1, obs_dim, 1)
        self.rows = torch.zeros(size, sum(self.widths), device=device)
        self.size, self.pos, self.full = size, 0, False

    def add(self, obs, action, reward, next_obs, termination):
        row = np.concatenate([np.ravel(obs), np.ravel(action), [reward], np.ravel(next_obs), [termination]])
        self.rows[self.pos] = torch.from_numpy(row.astype(np.float32))
        self.pos = (self.pos + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, batch_size):
        index = torch.randint(0, self.size if self.full else self.pos, (batch_size,), device=self.rows.device)
        obs, actions, rewards, next_obs, terminations = self.rows[index].split(self.widths, -1)
        return obs, actions, rewards.squeeze(-1), next_obs, terminations.squeeze(-1)


def soft_q_loss(qf, qf_target, actor, batch, alpha, gamma):
    """Eq. 5-6: (Q_k(s,a) - [r + gamma (1 - d) (min_k Q'_k(s', a') - alpha log pi(a'|s'))])^2, a' ~ pi(s')."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        next_actions, next_log_pi = actor.get_action(next_obs)
        min_q_next = qf_target(next_obs, next_actions).min(0).values - alpha * next_log_pi
        q_target = rewards + gamma * (1 - terminations) * min_q_next
    q_values = qf(obs, actions)
    # sum over the critics: each critic gets the full MSE gradient, as with separate losses
    return F.mse_loss(q_values, q_target.expand_as(q_values), reduction="none").mean(1).sum(), q_values


def policy_loss(actor, qf, obs, alpha):
    """Eq. 7: E_s E_{a~pi}[alpha log pi(a|s) - min_k Q_k(s, a)] through the reparameterised a."""
    actions, log_pi = actor.get_action(obs)
    return (alpha * log_pi - qf(obs, actions).min(0).values).mean(), log_pi


def alpha_loss(log_alpha, log_pi, target_entropy):
    """Eq. 18: -alpha (log pi(a|s) + H_target), so alpha grows when the entropy drops below the target."""
    return (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()


def sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, global_step, bf16=False):
    """One SAC step: critics every call, actor and alpha policy_frequency times every policy_frequency calls, target
    critics every target_network_frequency calls. optimizers: {"q", "actor", "alpha"}. The entropy target is -|A|.
    bf16 autocasts the hidden layers' matmuls; weights, optimiser states, targets, log-probs and losses stay float32."""
    device_type, target_entropy = batch[0].device.type, -float(batch[1].shape[-1])
    alpha = log_alpha.exp().detach()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        qf_loss, q_values = soft_q_loss(qf, qf_target, actor, batch, alpha, args.gamma)
    optimizers["q"].zero_grad(set_to_none=True)
    qf_loss.backward()
    optimizers["q"].step()
    stats = {"losses/qf_loss": qf_loss.detach(), "losses/qf1_values": q_values[0].detach().mean()}

    if global_step % args.policy_frequency == 0:
        qf.requires_grad_(False)  # the actor's gradient flows through Q's input only (as Spinning Up freezes Q here)
        for _ in range(args.policy_frequency):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                actor_loss, log_pi = policy_loss(actor, qf, batch[0], alpha)
            optimizers["actor"].zero_grad(set_to_none=True)
            actor_loss.backward()
            optimizers["actor"].step()
            if args.autotune:
                loss = alpha_loss(log_alpha, log_pi, target_entropy)
                optimizers["alpha"].zero_grad(set_to_none=True)
                loss.backward()
                optimizers["alpha"].step()
                alpha = log_alpha.exp().detach()
        qf.requires_grad_(True)
        stats |= {"losses/actor_loss": actor_loss.detach(), "losses/alpha": alpha, "charts/entropy": -log_pi.detach().mean()}

    if global_step % args.target_network_frequency == 0:
        with torch.no_grad():
            torch._foreach_lerp_(list(qf_target.parameters()), list(qf.parameters()), args.tau)
    return stats


def bf16_is_fast(device):
    """Whether the hardware computes bfloat16 matmuls natively: CUDA with bf16, or a CPU with AMX / AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to ask, so stay in float32
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def make_optimizer(params, lr, device):
    """Adam, fused into one kernel over all parameters where torch has it (CUDA, and CPU since torch 2.4)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=device.type == "cuda")


# ---------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, state, **progress):
    """state: name -> module, optimizer or tensor, listed once in main; progress: the run's counters. Saved with the RNG
    states to a temporary file, then renamed: a kill while saving never leaves half a checkpoint. No replay buffer."""
    state = {name: item.detach().cpu() if torch.is_tensor(item) else item.state_dict() for name, item in state.items()}
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    rng = [random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda_rng]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": state, "rng": rng, "progress": progress}, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def load_checkpoint(path, state):
    """The inverse of save_checkpoint: every item of state takes back its saved values in place; returns the progress."""
    checkpoint = torch.load(path, weights_only=False)
    try:
        for name, item in state.items():
            if torch.is_tensor(item):
                item.data.copy_(checkpoint["state"][name])
            else:
                item.load_state_dict(checkpoint["state"][name])
    except (KeyError, RuntimeError, ValueError) as error:  # other networks or optimisers than the checkpoint's
        error = " ".join(str(error).split())[:200]
        sys.exit(f"error: {path} does not fit these arguments ({error}); resume with those of the interrupted run.")
    python_rng, numpy_rng, torch_rng, cuda_rng = checkpoint["rng"]
    random.setstate(python_rng)
    np.random.set_state(numpy_rng)
    torch.set_rng_state(torch_rng)
    torch.cuda.set_rng_state_all(cuda_rng)
    return checkpoint["progress"]


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
    positive = ("total_timesteps", "eval_frequency", "eval_episodes", "log_frequency", "batch_size", "buffer_size")
    for name in (*positive, "policy_frequency", "target_network_frequency", "hidden_size"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.total_timesteps <= args.learning_starts:
        sys.exit(f"error: --total-timesteps {args.total_timesteps} must exceed --learning-starts {args.learning_starts}.")
    checkpoint_path = Path(args.checkpoint_dir) / f"{args.env_id}__{args.exp_name}__{args.seed}.pt"
    if args.resume and not checkpoint_path.exists():
        sys.exit(f"error: --resume found no checkpoint at {checkpoint_path}; start the run without --resume.")
    if not args.resume and checkpoint_path.exists():
        fix = "continue it with --resume, or delete it to start over"
        sys.exit(f"error: {checkpoint_path} holds an interrupted run's checkpoint; {fix}.")

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    bf16 = args.bf16 and bf16_is_fast(device)
    precision = "bf16-autocast" if bf16 else "fp32"

    env = make_env(args.env_id, args.seed)
    if not isinstance(env.action_space, gym.spaces.Box):
        sys.exit(f"error: sac.py needs continuous (Box) actions but {args.env_id} has {env.action_space}; use cleanil/dqn.py.")
    expert_json = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id) / "expert.json"
    expert_info = json.loads(expert_json.read_text()) if expert_json.exists() else None
    obs_dim, action_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))

    actor = Actor(env, args.hidden_size, args.log_std_min, args.log_std_max).to(device)
    qf = SoftQEnsemble(obs_dim, action_dim, args.hidden_size).to(device)
    qf_target = SoftQEnsemble(obs_dim, action_dim, args.hidden_size).to(device)
    qf_target.load_state_dict(qf.state_dict())
    log_alpha = torch.tensor(np.log(args.alpha), dtype=torch.float32, device=device, requires_grad=True)
    optimizers = {
        "q": make_optimizer(qf.parameters(), args.q_lr, device),
        "actor": make_optimizer(actor.parameters(), args.policy_lr, device),
        "alpha": make_optimizer([log_alpha], args.q_lr, device),
    }
    best_actor = deepcopy(actor)  # the actor of the best evaluation so far (--snapshot best)
    rb = ReplayBuffer(obs_dim, action_dim, args.buffer_size, device)
    # what a checkpoint holds, listed once (no replay buffer: --resume refills it)
    state = {"actor": actor, "qf": qf, "qf_target": qf_target, "log_alpha": log_alpha, "best_actor": best_actor}
    state.update({f"{name}_optimizer": optimizer for name, optimizer in optimizers.items()})
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    progress = {"global_step": 0, "run_name": run_name, "eval_rows": [], "wall_time": 0.0, "refill_env_steps": 0}
    if args.resume:
        progress = load_checkpoint(checkpoint_path, state)
    run_name, start_step, wall_offset, eval_rows = (progress[k] for k in ("run_name", "global_step", "wall_time", "eval_rows"))
    eval_env = make_env(args.env_id, args.seed + 10_000, args.capture_video, run_name, args.eval_episodes)
    run_dir = Path("runs") / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval.csv").unlink(missing_ok=True)  # a killed run may have evaluated past its checkpoint's rows
    for row in eval_rows:
        write_eval_row(run_dir, row)
    if args.track:
        import wandb

        run = {"project": args.wandb_project_name, "entity": args.wandb_entity, "name": run_name, "id": run_name}
        wandb.init(**run, config=vars(args), save_code=True, resume="allow")  # a resumed run continues its wandb run

    @torch.no_grad()
    def act_exploring(obs, global_step):
        if global_step <= args.learning_starts:
            return env.action_space.sample()
        return actor.get_action(torch.as_tensor(obs[None], dtype=torch.float32, device=device))[0][0].cpu().numpy()

    @torch.no_grad()
    def act_deterministic(obs):
        return actor.deterministic_action(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    def run_evaluation(global_step):
        if not all(torch.isfinite(value) for value in stats.values()):
            sys.exit(f"error: non-finite SAC loss before step {global_step}; lower --q-lr or --policy-lr.")
        returns = evaluate(act_deterministic, eval_env, args.eval_episodes, args.seed + 10_000)
        row = {
            "global_step": global_step,
            "eval_return_mean": float(returns.mean()),
            "eval_return_std": float(returns.std()),
            "normalized_score": normalized_score(float(returns.mean()), expert_info),
            "wall_time": wall_offset + time.time() - start_time,
            "sps": (global_step - start_step) / max(time.time() - start_time, 1e-9),
        }
        if not eval_rows or row["eval_return_mean"] > max(r["eval_return_mean"] for r in eval_rows):
            best_actor.load_state_dict(actor.state_dict())
        eval_rows.append(row)
        write_eval_row(run_dir, row)
        if args.track:
            wandb.log(
                {"eval/return": row["eval_return_mean"], "eval/normalized_score": row["normalized_score"]}, step=global_step
            )
        progress_bar.set_postfix(sps=f"{row['sps']:.0f}", eval_return=f"{row['eval_return_mean']:.1f}")

    # SIGINT (Ctrl-C) and SIGTERM (a session's end, a cluster's preemption) finish the step, checkpoint, and exit
    stop_signals = []
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda signum, frame: stop_signals.append(signum))

    start_time = saved_time = time.time()
    obs, _ = env.reset(seed=args.seed + start_step)
    if args.resume:  # the checkpoint left the replay buffer out: refill it with the current policy
        for _ in tqdm(range(args.refill_steps), desc="refilling the replay buffer", file=sys.stderr, mininterval=2.0):
            action = act_exploring(obs, start_step)
            next_obs, reward, terminated, truncated, info = env.step(action)
            rb.add(obs, action, reward, next_obs, terminated)
            obs = next_obs if not (terminated or truncated) else env.reset()[0]
            progress["refill_env_steps"] += 1
    print(f"{run_name}: {device}, {precision}", file=sys.stderr)
    progress_bar = tqdm(total=args.total_timesteps, initial=start_step, file=sys.stderr, desc=run_name, mininterval=2.0)
    stats = {}
    if start_step == 0:
        run_evaluation(0)
    for global_step in range(start_step + 1, args.total_timesteps + 1):
        action = act_exploring(obs, global_step)
        next_obs, reward, terminated, truncated, info = env.step(action)
        # bootstrap through time-limit truncations: only a true termination zeroes the target
        rb.add(obs, action, reward, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            if args.track:
                episode = {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]}
                wandb.log(episode, step=global_step)
            obs, _ = env.reset()

        if global_step > args.learning_starts:
            batch = rb.sample(args.batch_size)
            stats = sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, global_step, bf16)
            if args.track and global_step % args.log_frequency == 0:
                sps = (global_step - start_step) / (time.time() - start_time)
                wandb.log({**{key: float(value) for key, value in stats.items()}, "charts/SPS": sps}, step=global_step)
        progress_bar.update(1)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            run_evaluation(global_step)
        if stop_signals or (args.checkpoint_minutes and time.time() - saved_time > 60 * args.checkpoint_minutes):
            progress.update(global_step=global_step, wall_time=wall_offset + time.time() - start_time)
            save_checkpoint(checkpoint_path, state, **progress)
            saved_time = time.time()
        if stop_signals:
            progress_bar.close()
            print(f"stopped at step {global_step}: continue from {checkpoint_path} with --resume.", file=sys.stderr)
            sys.exit(128 + stop_signals[0])
    progress_bar.close()

    wall_time, refill_env_steps = wall_offset + time.time() - start_time, progress["refill_env_steps"]
    mean_sps = (args.total_timesteps - start_step) / max(time.time() - start_time, 1e-9)
    # policy.pt: obs -> pre-tanh mean of the chosen actor as a plain nn.Sequential; `demos.py --from-policy` reads it
    snapshot = best_actor if args.snapshot == "best" else actor
    head = nn.Linear(args.hidden_size, action_dim)  # the mean half of the actor's head
    head.load_state_dict({key: value[:action_dim] for key, value in snapshot.fc_head.state_dict().items()})
    policy = nn.Sequential(snapshot.fc1, nn.ReLU(), snapshot.fc2, nn.ReLU(), head)
    torch.save({key: value.cpu() for key, value in policy.state_dict().items()}, run_dir / "policy.pt")
    spec = {"file": "policy.pt", "layers": [obs_dim, args.hidden_size, args.hidden_size, action_dim], "activation": "relu"}
    spec.update(output="tanh", action_scale=actor.action_scale.tolist(), action_bias=actor.action_bias.tolist())
    best = max(eval_rows, key=lambda row: row["eval_return_mean"])  # the first best, whose actor best_actor holds
    policy_info = {
        "env_id": args.env_id,
        "algorithm": "sac",
        "snapshot": args.snapshot,
        "snapshot_step": best["global_step"] if args.snapshot == "best" else args.total_timesteps,
        "training_steps": args.total_timesteps,
        "training_wall_time_s": round(wall_time, 1),
        "refill_env_steps": refill_env_steps,
        "seed": args.seed,
        "command": " ".join(["python", *sys.argv]),
        "best_eval_return": best["eval_return_mean"],
        "policy": spec,
    }
    (run_dir / "policy.json").write_text(json.dumps(policy_info, indent=2) + "\n")
    write_summary(run_dir, args, eval_rows, wall_time, mean_sps, device, precision, refill_env_steps=refill_env_steps)
    checkpoint_path.unlink(missing_ok=True)  # finished: nothing left to resume
    print(f"{run_name}: final return {eval_rows[-1]['eval_return_mean']:.1f}, {mean_sps:.0f} steps/s, outputs in {run_dir}")
    env.close()
    eval_env.close()
    if args.track:
        wandb.finish()
