"""Every shipped expert folder: the DESIGN.md schema, the return bars, and a replay of its policy (loaded without
importing the trainer) that reproduces both its demos' actions and its recorded return."""

import gymnasium as gym
import numpy as np
import pytest

from conftest import EXPERT_BARS, EXPERTS, load_expert_mlp, validate_expert_folder

SHIPPED = sorted(path.name for path in EXPERTS.iterdir() if path.is_dir()) if EXPERTS.exists() else []


def test_foundation_experts_are_shipped():
    required = {"CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1", "InvertedPendulum-v4", "Hopper-v4"}
    assert required <= set(SHIPPED), required - set(SHIPPED)


@pytest.mark.parametrize("env_id", SHIPPED)
def test_expert_folder_schema_and_bar(env_id):
    info, demos = validate_expert_folder(EXPERTS / env_id)
    assert info["expert_return_mean"] >= EXPERT_BARS[env_id], (env_id, info["expert_return_mean"])
    assert demos["observations"].nbytes + demos["next_observations"].nbytes < 200e6
    size = sum(path.stat().st_size for path in (EXPERTS / env_id).iterdir())
    # Humanoid's 10 episodes (the fewest demos an expert ships) of 376-dim observations, float16, take 11 MB
    assert size < (12e6 if env_id.startswith("Humanoid") else 8e6), f"{env_id} folder is {size / 1e6:.1f} MB"


@pytest.mark.parametrize("env_id", SHIPPED)
def test_expert_policy_reproduces_demos_and_return(env_id):
    info, demos = validate_expert_folder(EXPERTS / env_id)
    act = load_expert_mlp(EXPERTS / env_id)
    # the demos were recorded with this deterministic policy
    actions = act(demos["observations"][:2000])
    if info["action_space"] == "discrete":
        assert (actions == demos["actions"][:2000]).mean() > 0.99
    else:
        # float16 demo observations (Humanoid's) are the recorded ones rounded to 11 significant bits: replayed on them
        # the policy's actions move by up to 2e-3 (of Humanoid's +-0.4 range), where float32 ones reproduce them to 1e-4
        atol = 5e-3 if demos["observations"].dtype == np.float16 else 1e-4
        np.testing.assert_allclose(actions, demos["actions"][:2000], atol=atol)
    # a few fresh episodes land within the recorded spread of the expert return
    env = gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))
    returns = []
    obs, _ = env.reset(seed=12345)
    while len(returns) < 3:
        obs, _, terminated, truncated, stats = env.step(act(obs[None])[0])
        if terminated or truncated:
            returns.append(float(stats["episode"]["r"]))
            obs, _ = env.reset()
    tolerance = 3 * info["expert_return_std"] + 0.05 * abs(info["expert_return_mean"]) + 1.0
    assert abs(np.mean(returns) - info["expert_return_mean"]) <= tolerance, (returns, info["expert_return_mean"])


# DESIGN.md: an expert ships only if it does not fail (no episode ends early by falling, none scores below half the
# median). These two were shipped before the rule and are being replaced (issue 34): strict, so the entry must go
# once a passing folder ships.
FAILING_EXPERTS = {
    "Ant-v4": "8 of its 25 demo episodes fail (5 end early; returns down to -322)",
    "Walker2d-v4": "3 of its 25 demo episodes end early",
}
MUJOCO = [env_id for env_id in SHIPPED if env_id.endswith("-v4") and env_id != "InvertedPendulum-v4"]


@pytest.mark.parametrize(
    "env_id",
    [
        pytest.param(env_id, marks=pytest.mark.xfail(strict=True, reason=FAILING_EXPERTS[env_id]))
        if env_id in FAILING_EXPERTS
        else env_id
        for env_id in MUJOCO
    ],
)
def test_mujoco_expert_demos_never_fail(env_id):
    _, demos = validate_expert_folder(EXPERTS / env_id)
    starts = demos["episode_starts"]
    returns = np.add.reduceat(demos["rewards"].astype(np.float64), starts)
    ends = np.append(starts[1:], len(demos["rewards"])) - 1
    early = int(demos["terminations"][ends].sum())
    low = int((returns < 0.5 * np.median(returns)).sum())
    assert early == 0 and low == 0, f"{early} episodes end early, {low} score below half the median {np.median(returns):.0f}"
