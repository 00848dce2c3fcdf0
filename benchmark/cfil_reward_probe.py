"""What CFIL's reward says where it matters: a cfil.py checkpoint's flows scored on the first expert demo and on states
the checkpoint's own policy visits (sampled actions, as in training).

    python benchmark/cfil_reward_probe.py long_runs/Humanoid-v4__cfil__1/checkpoint.pt [--steps 2000]

Prints, for each set, the mean log-densities of the agent flow p and the expert flow q, x = log p - log q, and the
reward r = shift - squash(x) (cfil.py's), and the policy's mean log pi, whose -alpha log pi is SAC's entropy term per
step. A reward that is flat over the policy's states (e.g. squash(x) at its bound everywhere) gives SAC nothing to climb.
"""

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cleanil"))
import cfil  # noqa: E402


def scores(model, args, obs_dims, obs, actions, next_obs):
    """Mean log p, log q, x and reward (with its min and max) of a set of transitions, as cfil.py's replay_reward."""
    z = cfil.flow_input(args["mode"], *(torch.as_tensor(v, dtype=torch.float32) for v in (obs, actions, next_obs)), obs_dims)
    shift = args["squash_bound"] if args["reward_shift"] and args["variant"] in cfil.SQUASHED_VARIANTS else 0.0
    with torch.no_grad():
        x, log_p, log_q = model(z)
        reward = cfil.cfil_reward(cfil.cfil_x(model, z, args["variant"], args["squash_scale"], args["squash_bound"]), shift)
    mean = lambda v: float("nan") if v is None else v.mean().item()
    return dict(
        log_p=mean(log_p), log_q=mean(log_q), x=mean(x), reward=mean(reward), min=reward.min().item(), max=reward.max().item()
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--steps", type=int, default=2000, help="env steps of the policy to score")
    parser.add_argument("--expert-path", default=None, help="default: experts/<env-id>/")
    cli = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = torch.load(cli.checkpoint, weights_only=False)
    args = checkpoint["args"]
    env = gym.make(args["env_id"])
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    obs_dims = cfil.flow_observation_dims(args["env_id"], obs_dim, args["flow_features"])
    flow_obs = obs_dim if obs_dims is None else len(obs_dims)
    dim = {"sa": flow_obs + action_dim, "s": flow_obs, "ss": 2 * flow_obs}[args["mode"]]
    model = cfil.CoupledFlow(
        dim,
        args["variant"],
        args["flow_blocks"],
        args["flow_hidden_size"],
        args["flow_hidden_layers"],
        args["flow_batch_norm"],
    )
    model.load_state_dict(checkpoint["reward_model"])
    model.eval()
    actor = cfil.Actor(env, args["hidden_size"], args["log_std_min"], args["log_std_max"])
    actor.load_state_dict(checkpoint["actor"])

    demos = np.load(Path(cli.expert_path or Path(__file__).resolve().parent.parent / "experts" / args["env_id"]) / "demos.npz")
    first = slice(0, demos["episode_starts"][1] if len(demos["episode_starts"]) > 1 else len(demos["actions"]))
    expert = scores(model, args, obs_dims, *(demos[k][first] for k in ("observations", "actions", "next_observations")))
    print(f"step {checkpoint['global_step']}, expert demo 1: " + ", ".join(f"{k} {v:.3f}" for k, v in expert.items()))

    rows, log_pis, obs = {"obs": [], "actions": [], "next_obs": []}, [], env.reset(seed=0)[0]
    for _ in range(cli.steps):
        with torch.no_grad():
            action, log_pi = actor.get_action(torch.as_tensor(obs[None], dtype=torch.float32))[:2]
        next_obs, _, terminated, truncated, _ = env.step(action[0].numpy())
        rows["obs"].append(obs), rows["actions"].append(action[0].numpy()), rows["next_obs"].append(next_obs)
        log_pis.append(log_pi.reshape(-1)[0].item())
        obs = env.reset()[0] if terminated or truncated else next_obs
    policy = scores(model, args, obs_dims, *(np.array(v) for v in rows.values()))
    print(f"step {checkpoint['global_step']}, policy's states: " + ", ".join(f"{k} {v:.3f}" for k, v in policy.items()))
    print(
        f"policy log pi {np.mean(log_pis):.3f}: entropy term -alpha log pi = {-args['alpha'] * np.mean(log_pis):.3f} per step"
    )
