"""gaifo.py: the blocks it shares with gail.py are the same code (their math is tested in test_gail.py), its own TRPO
step keeps the KL bound, its discriminator sees (s, s') and never the expert's actions (demos whose actions are NaN
give the very same run), every flag path end to end, bad input, and learning CartPole-v1 from state-only demos."""

import copy
import inspect
import shutil

import gaifo
import gail
import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import EXPERTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script

SHARED = [
    "Args",
    "discriminator_loss",
    "gradient_penalty",
    "learned_reward",
    "update_discriminator",
    "layer_init",
    "mlp",
    "Policy",
    "gae",
    "value_loss",
    "conjugate_gradient",
    "fisher_vector_product",
    "trpo_step",
    "make_env",
    "evaluate",
    "load_expert",
    "normalized_score",
    "write_eval_row",
    "write_summary",
]


@pytest.mark.parametrize("name", SHARED)
def test_shared_blocks_are_gails(name):
    # gail.py and gaifo.py differ in the discriminator's inputs only: `diff cleanil/gail.py cleanil/gaifo.py`
    assert inspect.getsource(getattr(gaifo, name)) == inspect.getsource(getattr(gail, name))


def test_main_block_is_gails():
    main = lambda module: inspect.getsource(module).split('if __name__ == "__main__":')[1]
    assert main(gaifo) == main(gail)


def test_trpo_step_keeps_its_kl_bound_and_improves_the_surrogate():
    torch.manual_seed(1)
    policy = gaifo.Policy(4, gym.spaces.Box(-1, 1, (2,)), hidden_size=16)
    obs = torch.randn(1024, 4)
    with torch.no_grad():
        actions = policy.distribution(policy(obs)).sample()
    advantages = torch.sign(obs[:, 1]) * actions[:, 1]
    old = copy.deepcopy(policy)
    stats = gaifo.trpo_step(policy, obs, actions, advantages, gaifo.Args(max_kl=0.01, fisher_subsample=1))
    with torch.no_grad():
        old_dist, new_dist = old.distribution(old(obs)), policy.distribution(policy(obs))
        kl = torch.distributions.kl_divergence(old_dist, new_dist).mean()
        surrogate = (torch.exp(new_dist.log_prob(actions) - old_dist.log_prob(actions)) * advantages).mean()
    assert 0 < kl <= 0.01 * (1 + 1e-5) and surrogate > advantages.mean() + 1e-4, (kl, surrogate, stats)


def test_discriminator_sees_state_transitions_only():
    assert "actions" not in gaifo.DEMO_KEYS
    obs, next_obs = torch.randn(5, 3), torch.randn(5, 3)
    # no "actions" key at all: a discriminator input that needed one would raise here
    inputs = gaifo.discriminator_inputs({"observations": obs, "next_observations": next_obs}, gym.spaces.Discrete(2))
    torch.testing.assert_close(inputs, torch.cat([obs, next_obs], -1))


def test_update_discriminator_on_transitions_rewards_the_expert_s_move():
    """Alg. 1's D step and reward on a toy batch: expert and agent visit the same states, the expert moves right
    (s' = s + 0.5 e1), the agent left; only s' tells them apart. After update_discriminator on discriminator_inputs,
    the reward -log(1 - D) (and log D) of the expert's transitions exceeds the agent's: swapped sides, a flipped
    reward or a D blind to s' fail."""
    torch.manual_seed(0)
    obs = torch.randn(256, 2)
    move = torch.tensor([0.5, 0.0])
    expert, agent = ({"observations": obs, "next_observations": obs + sign * move} for sign in (1, -1))
    expert_inputs, agent_inputs = (gaifo.discriminator_inputs(x, gym.spaces.Discrete(2)) for x in (expert, agent))
    discriminator = gaifo.mlp(4, 1, 32, out_std=0.01)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-2)
    args = gaifo.Args(disc_epochs=20, disc_num_minibatches=4)
    gaifo.update_discriminator(discriminator, optimizer, expert_inputs, agent_inputs, args)
    with torch.no_grad():
        expert_logits, agent_logits = discriminator(expert_inputs).squeeze(-1), discriminator(agent_inputs).squeeze(-1)
    assert (expert_logits > 0).float().mean() > 0.95 and (agent_logits < 0).float().mean() > 0.95
    for reward_type in ("neg_log_one_minus_d", "log_d"):
        expert_reward = gaifo.learned_reward(expert_logits, reward_type)
        agent_reward = gaifo.learned_reward(agent_logits, reward_type)
        assert expert_reward.mean() > agent_reward.mean() + 1, (reward_type, expert_reward.mean(), agent_reward.mean())


COMMON = [
    "--total-timesteps",
    600,
    "--num-envs",
    2,
    "--num-steps",
    100,
    "--eval-frequency",
    200,
    "--eval-episodes",
    2,
    "--num-expert-trajectories",
    2,
]
SMOKE = {
    "discrete": ["--env-id", "CartPole-v1"],
    "discrete-logd-gp-subsample-track": [
        "--env-id",
        "CartPole-v1",
        "--reward-type",
        "log_d",
        "--gp-coef",
        10,
        "--subsample-frequency",
        4,
        "--track",
    ],
    "continuous-gp": ["--env-id", "Pendulum-v1", "--gp-coef", 10],
    "continuous-logd-subsample-track": [
        "--env-id",
        "Pendulum-v1",
        "--reward-type",
        "log_d",
        "--subsample-frequency",
        5,
        "--track",
        "--no-normalize-observations",
    ],
    "continuous-video": ["--env-id", "Pendulum-v1", "--capture-video"],
}


@pytest.mark.parametrize("flags", SMOKE.values(), ids=SMOKE.keys())
def test_smoke(workdir, flags):
    run_script("gaifo.py", *flags, *COMMON, cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    steps = [row["global_step"] for row in rows]
    # the budget is an upper bound: 3 iterations of 2 x 100 env steps, less the autoreset steps
    assert steps[0] == 0 and 400 <= steps[-1] <= 600 and len(rows) >= 3 and (np.diff(steps) > 0).all(), steps
    assert all(np.isfinite(list(row.values())).all() for row in rows), rows
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"], summary["mean_sps"]]).all(), summary
    assert summary["args"]["subsample_frequency"] == (
        flags[flags.index("--subsample-frequency") + 1] if "--subsample-frequency" in flags else 1
    )
    assert summary["args"]["reward_type"] == ("log_d" if "log_d" in flags else "neg_log_one_minus_d")
    assert summary["args"]["gp_coef"] == (10 if "--gp-coef" in flags else 0)
    if "--track" in flags:
        # the run ends with status 0 only if every logged statistic (KL, D accuracies, reward, losses) was finite
        assert list((workdir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    if "--capture-video" in flags:
        assert list((workdir / "videos").rglob("*.mp4")), "no evaluation video recorded"


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_expert_actions_are_never_read(workdir, env_id):
    """Demos whose actions are NaN (of the wrong dtype, even) give exactly the run the real demos give."""
    expert_dir = workdir / "nan-actions"
    shutil.copytree(EXPERTS / env_id, expert_dir)
    with np.load(expert_dir / "demos.npz") as npz:
        demos = {key: npz[key] for key in npz.files}
    np.savez_compressed(
        expert_dir / "demos.npz", **{**demos, "actions": np.full(demos["actions"].shape, np.nan, dtype=np.float32)}
    )
    results = []
    for name, path in (("real", EXPERTS / env_id), ("nan", expert_dir)):
        run_script("gaifo.py", "--env-id", env_id, "--expert-path", path, "--exp-name", name, *COMMON, cwd=workdir)
        (run_dir,) = [d for d in run_dirs(workdir) if f"__{name}__" in d.name]
        results.append([(row["global_step"], row["eval_return_mean"]) for row in read_eval_csv(run_dir)])
    assert results[0] == results[1] and np.isfinite(results[1]).all(), results


def test_bad_input_is_one_clear_sentence(workdir):
    result = run_script(
        "gaifo.py", "--env-id", "MountainCar-v0", "--expert-path", workdir / "nowhere", cwd=workdir, check=False
    )
    assert_clean_error(result, "is not a usable expert folder", f"python cleanil/demos.py --check {workdir / 'nowhere'}")
    result = run_script("gaifo.py", "--env-id", "NoSuchEnv-v0", cwd=workdir, check=False)
    assert_clean_error(result, "unknown environment id 'NoSuchEnv-v0'")


@pytest.mark.learning
def test_gaifo_cartpole_learns_from_observations_only(workdir):
    run_script("gaifo.py", "--env-id", "CartPole-v1", "--total-timesteps", 80_000, "--eval-frequency", 10_000, cwd=workdir)
    rows = read_eval_csv(run_dirs(workdir)[0])
    returns = [row["eval_return_mean"] for row in rows]
    assert max(returns) >= 400 and returns[-1] >= 400, returns
