"""reinforce.py: reward-to-go across episode boundaries, an unbiased policy-gradient estimator, the value loss, every
flag path end to end, bad input, and learning CartPole-v1 from the environment's reward."""
import numpy as np
import pytest
import torch

import reinforce
from conftest import assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script


def test_rewards_to_go_restarts_at_episode_boundaries():
    # env 0: an episode of 2 steps then one of 3; env 1: one episode of 4 steps, then a masked-out step
    rewards = torch.tensor([[1.0, 1.0], [2.0, 0.0], [1.0, 0.0], [1.0, 5.0], [4.0, 7.0]])
    dones = torch.tensor([[False, False], [True, False], [False, False], [False, True], [True, False]])
    expected_undiscounted = torch.tensor([[3.0, 6.0], [2.0, 5.0], [6.0, 5.0], [5.0, 5.0], [4.0, 7.0]])
    torch.testing.assert_close(reinforce.rewards_to_go(rewards, dones, 1.0), expected_undiscounted)
    expected_half = torch.tensor([[1 + 0.5 * 2, 1 + 0.125 * 5], [2.0, 0.25 * 5], [1 + 0.5 * 1 + 0.25 * 4, 0.5 * 5],
                                  [1 + 0.5 * 4, 5.0], [4.0, 7.0]])
    torch.testing.assert_close(reinforce.rewards_to_go(rewards, dones, 0.5), expected_half)


def test_reinforce_loss_gradient_is_the_policy_gradient_of_a_bandit():
    # 3-armed bandit, softmax policy: grad_theta E[r] = pi * (r - pi . r); the estimator must recover it from samples
    torch.manual_seed(0)
    logits, arm_rewards = torch.tensor([0.3, -0.2, 0.1], requires_grad=True), torch.tensor([1.0, 2.0, 4.0])
    probs = torch.softmax(logits, 0)
    true_gradient = probs * (arm_rewards - probs @ arm_rewards)
    actions = torch.distributions.Categorical(logits=logits).sample((200_000,))
    log_probs = torch.distributions.Categorical(logits=logits.expand(len(actions), 3)).log_prob(actions)
    reinforce.reinforce_loss(log_probs, arm_rewards[actions]).backward()
    torch.testing.assert_close(-logits.grad, true_gradient.detach(), atol=0.01, rtol=0)
    # the advantage is a constant weight: no gradient flows into whatever produced it
    advantages = torch.ones(3, requires_grad=True)
    reinforce.reinforce_loss(torch.zeros(3, requires_grad=True), advantages).backward()
    assert advantages.grad is None


def test_value_loss_on_toy_batch():
    values, returns = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([2.0, 2.0, 3.0])
    assert reinforce.value_loss(values, returns).item() == pytest.approx(0.5 * (1 + 0 + 9) / 3)


SMOKE = {
    "discrete": ["--env-id", "CartPole-v1", "--no-baseline"],
    "discrete-baseline-track": ["--env-id", "CartPole-v1", "--baseline", "--track"],
    "gaussian-baseline-no-norm-adv": ["--env-id", "Pendulum-v1", "--baseline", "--no-norm-adv"],
    # no expert.json: only the normalized score is NaN
    "gaussian-no-expert-video": ["--env-id", "InvertedPendulum-v4", "--expert-path", "nowhere", "--capture-video"],
}


@pytest.mark.parametrize("flags", SMOKE.values(), ids=SMOKE.keys())
def test_smoke(workdir, flags):
    run_script("reinforce.py", *flags, "--total-timesteps", 600, "--eval-frequency", 300, "--eval-episodes", 2,
               "--num-episodes", 2, cwd=workdir, env_vars={"MUJOCO_GL": "egl"})
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    steps = [row["global_step"] for row in rows]
    assert steps[0] == 0 and steps[-1] >= 600 and len(rows) >= 3 and np.all(np.diff(steps) > 0), steps
    for row in rows:
        assert np.isfinite([value for key, value in row.items() if key != "normalized_score"]).all(), row
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["mean_sps"], summary["total_wall_time_s"]]).all(), summary
    has_expert = "--expert-path" not in flags
    assert np.isfinite(summary["final_normalized_score"]) == has_expert, summary
    assert summary["args"]["baseline"] == ("--baseline" in flags)
    if "--track" in flags:
        assert list((workdir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    if "--capture-video" in flags:  # the first episode of each evaluation
        assert len(list((workdir / "videos").rglob("*.mp4"))) == len(rows), "no video recorded"


def test_unknown_env_is_one_clear_sentence(workdir):
    result = run_script("reinforce.py", "--env-id", "CartPole-v9", cwd=workdir, check=False)
    assert_clean_error(result, "unknown environment id 'CartPole-v9'")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.learning
def test_reinforce_cartpole_learns_from_reward(workdir):
    # seed 3 starts from a policy that drops the pole at once (eval return ~9), so the bar is learnt, not inherited
    run_script("reinforce.py", "--env-id", "CartPole-v1", "--seed", 3, "--total-timesteps", 50_000,
               "--eval-frequency", 10_000, cwd=workdir)
    rows = read_eval_csv(run_dirs(workdir)[0])
    assert rows[0]["eval_return_mean"] < 50, rows
    assert rows[-1]["eval_return_mean"] >= 195, rows
