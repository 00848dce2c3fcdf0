"""What CFIL's reward says where it matters: a cfil.py checkpoint's flows scored on the first expert demo and on states
the checkpoint's own policy visits (sampled actions, as in training).

    python benchmark/cfil_reward_probe.py checkpoints/Humanoid-v4__cfil__1.pt [--steps 2000] -- --env-id Humanoid-v4 ...

A checkpoint holds networks and counters, not the run's arguments: give the cfil.py arguments of the run after `--`
(those that shape the networks and the reward matter: --env-id, --mode, --variant, --flow-*, --squash-*, --hidden-size,
--expert-path, ...). Prints, for each set, the mean log-densities of the agent flow p and the expert flow q,
x = log p - log q, and cfil.py's reward r = shift - squash(x) (its replay_reward, in float32), with its min and max;
then the policy's mean log pi, whose -alpha log pi is SAC's entropy term per step (alpha: the checkpoint's). A reward
that is flat over the policy's states (e.g. squash(x) at its bound everywhere) gives SAC nothing to climb.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cleanil"))
import cfil  # noqa: E402


def scores(model, args, shift, obs_dims, obs, actions, next_obs):
    """Mean log p, log q, x and reward (with its min and max) of a set of transitions, by cfil.py's replay_reward."""
    obs, actions, next_obs = (torch.as_tensor(v, dtype=torch.float32).flatten(1) for v in (obs, actions, next_obs))
    with torch.no_grad():
        x, log_p, log_q = model(cfil.flow_input(args.mode, obs, actions, next_obs, obs_dims))
    reward = cfil.replay_reward(model, obs, actions, next_obs, args, shift, obs_dims=obs_dims)
    mean = lambda v: float("nan") if v is None else v.mean().item()
    return dict(
        log_p=mean(log_p), log_q=mean(log_q), x=mean(x), reward=mean(reward), min=reward.min().item(), max=reward.max().item()
    )


if __name__ == "__main__":
    argv, cfil_argv = sys.argv[1:], []
    if "--" in argv:
        argv, cfil_argv = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    usage = "%(prog)s CHECKPOINT [--steps N] -- CFIL.PY ARGS OF THE RUN"
    parser = argparse.ArgumentParser(description=__doc__, usage=usage, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoints/<env-id>__<exp-name>__<seed>.pt of a stopped cfil.py run")
    parser.add_argument("--steps", type=int, default=2000, help="env steps of the policy to score")
    cli = parser.parse_args(argv)
    args = tyro.cli(cfil.Args, args=cfil_argv, prog=f"{Path(__file__).name} {cli.checkpoint} --")
    if cli.steps <= 0:
        sys.exit(f"error: --steps must be positive, got {cli.steps}.")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    try:
        checkpoint = torch.load(cli.checkpoint, weights_only=False)
        state, step = checkpoint["state"], checkpoint["progress"]["global_step"]
    except (OSError, RuntimeError, KeyError, TypeError) as error:
        sys.exit(f"error: {cli.checkpoint} is not a cfil.py checkpoint ({error}).")

    env = cfil.make_env(args.env_id, args.seed)
    obs_dim = int(np.prod(env.observation_space.shape))
    expert_dir = Path(args.expert_path or Path(cfil.__file__).resolve().parent.parent / "experts" / args.env_id)
    keys = ("observations", "actions", "next_observations")
    _, demo = cfil.load_expert(expert_dir, env, 1, 1, args.seed, keys, args.any_env)  # the first demo, whole
    obs_dims = cfil.flow_observation_dims(args.env_id, obs_dim, args.flow_features)
    dim = cfil.flow_input(args.mode, *(torch.as_tensor(demo[key][:1]).flatten(1) for key in keys), obs_dims).shape[1]
    flow_sizes = (args.flow_blocks, args.flow_hidden_size, args.flow_hidden_layers, args.flow_batch_norm)
    model = cfil.CoupledFlow(dim, args.variant, *flow_sizes).eval()
    actor = cfil.Actor(env, args.hidden_size, args.log_std_min, args.log_std_max)
    try:
        model.load_state_dict(state["reward_model"])
        actor.load_state_dict(state["actor"])
    except (KeyError, RuntimeError) as error:
        error = " ".join(str(error).split())[:200]
        sys.exit(f"error: {cli.checkpoint} does not fit these cfil.py arguments ({error}); give those of its run after --.")
    alpha = state["log_alpha"].exp().item()
    shift = args.squash_bound if args.reward_shift and args.variant in cfil.SQUASHED_VARIANTS else 0.0

    expert = scores(model, args, shift, obs_dims, *(demo[key] for key in keys))
    print(f"step {step}, expert demo 1: " + ", ".join(f"{k} {v:.3f}" for k, v in expert.items()))

    rows, log_pis, obs = {"obs": [], "actions": [], "next_obs": []}, [], env.reset(seed=args.seed)[0]
    for _ in range(cli.steps):
        with torch.no_grad():
            action, log_pi = actor.get_action(torch.as_tensor(obs[None], dtype=torch.float32))
        next_obs, _, terminated, truncated, _ = env.step(action[0].numpy())
        rows["obs"].append(obs), rows["actions"].append(action[0].numpy()), rows["next_obs"].append(next_obs)
        log_pis.append(log_pi.reshape(-1)[0].item())
        obs = env.reset()[0] if terminated or truncated else next_obs
    policy = scores(model, args, shift, obs_dims, *(np.array(v) for v in rows.values()))
    print(f"step {step}, policy's states: " + ", ".join(f"{k} {v:.3f}" for k, v in policy.items()))
    print(f"policy log pi {np.mean(log_pis):.3f}: entropy term -alpha log pi = {-alpha * np.mean(log_pis):.3f} per step")
