"""reinforce.py: reward-to-go and whole-episode returns across episode boundaries, an unbiased policy-gradient
estimator, the value loss, the gradient-variance diagnostic and what it shows of the two estimators, every flag path
end to end, bad input, and solving CartPole-v1 from the environment's reward."""

import numpy as np
import pytest
import reinforce
import torch

from conftest import assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script, run_script_recording_wandb


def test_rewards_to_go_restarts_at_episode_boundaries():
    # env 0: an episode of 2 steps then one of 3; env 1: one episode of 4 steps, then a masked-out step
    rewards = torch.tensor([[1.0, 1.0], [2.0, 0.0], [1.0, 0.0], [1.0, 5.0], [4.0, 7.0]])
    dones = torch.tensor([[False, False], [True, False], [False, False], [False, True], [True, False]])
    expected_undiscounted = torch.tensor([[3.0, 6.0], [2.0, 5.0], [6.0, 5.0], [5.0, 5.0], [4.0, 7.0]])
    torch.testing.assert_close(reinforce.rewards_to_go(rewards, dones, 1.0), expected_undiscounted)
    expected_half = torch.tensor(
        [[1 + 0.5 * 2, 1 + 0.125 * 5], [2.0, 0.25 * 5], [1 + 0.5 * 1 + 0.25 * 4, 0.5 * 5], [1 + 0.5 * 4, 5.0], [4.0, 7.0]]
    )
    torch.testing.assert_close(reinforce.rewards_to_go(rewards, dones, 0.5), expected_half)


def test_episode_returns_is_the_whole_episode_return_at_every_step():
    # the batch of the reward-to-go test: env 0 holds an episode of 2 steps then one of 3; env 1 one of 4 steps, then the
    # first step of a masked-out one
    rewards = torch.tensor([[1.0, 1.0], [2.0, 0.0], [1.0, 0.0], [1.0, 5.0], [4.0, 7.0]])
    dones = torch.tensor([[False, False], [True, False], [False, False], [False, True], [True, False]])
    expected_undiscounted = torch.tensor([[3.0, 6.0], [3.0, 6.0], [6.0, 6.0], [6.0, 6.0], [6.0, 7.0]])
    torch.testing.assert_close(reinforce.episode_returns(rewards, dones, 1.0), expected_undiscounted)
    first, second, long = 1 + 0.5 * 2, 1 + 0.5 * 1 + 0.25 * 4, 1 + 0.125 * 5
    expected_half = torch.tensor([[first, long], [first, long], [second, long], [second, long], [second, 7.0]])
    torch.testing.assert_close(reinforce.episode_returns(rewards, dones, 0.5), expected_half)
    # G_0 is the reward-to-go at each episode's first step
    starts = torch.tensor([[True, True], [False, False], [True, False], [False, False], [False, True]])
    torch.testing.assert_close(
        reinforce.episode_returns(rewards, dones, 0.5)[starts], reinforce.rewards_to_go(rewards, dones, 0.5)[starts]
    )


def test_episode_gradient_variance_of_a_linear_log_prob():
    # log pi(a_t|s_t) = theta . x_t, so g_i = sum_{t in i} x_t Psi_t in closed form
    theta = torch.tensor([0.5, -1.0], requires_grad=True)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, -1.0], [0.0, 1.0]])
    weights, episode_ids = torch.tensor([2.0, 1.0, -1.0, 0.5, 4.0]), torch.tensor([0, 0, 1, 2, 2])
    g = torch.stack([(x[episode_ids == i] * weights[episode_ids == i, None]).sum(0) for i in range(3)])
    variance = reinforce.episode_gradient_variance(x @ theta, weights, episode_ids, [theta])
    assert variance.item() == pytest.approx(g.var(0).sum().item())
    assert variance.item() == pytest.approx(((g - g.mean(0)) ** 2).sum().item() / 2)
    # identical episodes: no variance
    assert reinforce.episode_gradient_variance(x[[0, 0]] @ theta, torch.ones(2), torch.tensor([0, 1]), [theta]).item() == 0.0


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
    "discrete-whole-episode-return": ["--env-id", "CartPole-v1", "--no-baseline", "--no-reward-to-go"],
    "discrete-baseline-track": ["--env-id", "CartPole-v1", "--baseline", "--track"],
    "gaussian-baseline-no-norm-adv": ["--env-id", "Pendulum-v1", "--baseline", "--no-norm-adv"],
    # no expert.json: only the normalized score is NaN (null in summary.json)
    "gaussian-no-expert-video": ["--env-id", "InvertedPendulum-v4", "--expert-path", "nowhere", "--capture-video"],
}


@pytest.mark.parametrize("flags", SMOKE.values(), ids=SMOKE.keys())
def test_smoke(workdir, flags):
    result = run_script(
        "reinforce.py",
        *flags,
        "--total-timesteps",
        600,
        "--eval-frequency",
        300,
        "--eval-episodes",
        2,
        "--num-episodes",
        2,
        cwd=workdir,
        env_vars={"MUJOCO_GL": "egl"},
    )
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    steps = [row["global_step"] for row in rows]
    assert steps[0] == 0 and steps[-1] >= 600 and len(rows) >= 3 and np.all(np.diff(steps) > 0), steps
    for row in rows:
        assert np.isfinite([value for key, value in row.items() if key != "normalized_score"]).all(), row
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["mean_sps"], summary["total_wall_time_s"]]).all(), summary
    # the device line, said before the progress bar and recorded
    assert result.stderr.index(f"{run_dir.name}: cpu, fp32") < result.stderr.index("it/s"), result.stderr
    assert (summary["device"], summary["precision"]) == ("cpu", "fp32") and "commit" in summary, summary
    has_expert = "--expert-path" not in flags
    assert (summary["final_normalized_score"] is not None and np.isfinite(summary["final_normalized_score"])) == has_expert, (
        summary
    )
    assert summary["args"]["baseline"] == ("--baseline" in flags)
    assert summary["args"]["reward_to_go"] == ("--no-reward-to-go" not in flags)
    if "--track" in flags:
        assert list((workdir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    if "--capture-video" in flags:  # the first episode of each evaluation
        assert len(list((workdir / "videos").rglob("*.mp4"))) == len(rows), "no video recorded"


def test_grad_variance_is_logged_and_lower_with_reward_to_go(tmp_path, monkeypatch):
    # one update on the same first batch (its episodes come from the initial policy, whatever the estimator): the
    # lecture's claim that dropping the rewards before t lowers the variance of the single-episode estimate
    first_update = {}
    for flag in ("--reward-to-go", "--no-reward-to-go"):
        workdir = tmp_path / flag
        workdir.mkdir()
        logged = run_script_recording_wandb(
            "reinforce.py",
            "--env-id",
            "CartPole-v1",
            flag,
            "--num-episodes",
            16,
            "--total-timesteps",
            1,
            "--eval-episodes",
            1,
            cwd=workdir,
            monkeypatch=monkeypatch,
        )
        (update,) = [row for row in logged if "losses/policy_loss" in row]
        assert np.isfinite(update["charts/grad_variance"]) and update["charts/grad_variance"] > 0, update
        first_update[flag] = update
    reward_to_go, whole_episode = first_update["--reward-to-go"], first_update["--no-reward-to-go"]
    assert reward_to_go["charts/episodic_return"] == whole_episode["charts/episodic_return"]
    variances = whole_episode["charts/grad_variance"], reward_to_go["charts/grad_variance"]
    assert variances[0] > 1.5 * variances[1], variances


def test_unknown_env_is_one_clear_sentence(workdir):
    result = run_script("reinforce.py", "--env-id", "CartPole-v9", cwd=workdir, check=False)
    assert_clean_error(result, "unknown environment id 'CartPole-v9'")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.learning
def test_reinforce_cartpole_solves_cartpole_v1(workdir):
    # seed 3 starts from a policy that drops the pole at once (eval return ~9), so the bar is learnt, not inherited;
    # 475 of 500 is what solves CartPole-v1
    run_script(
        "reinforce.py",
        "--env-id",
        "CartPole-v1",
        "--seed",
        3,
        "--baseline",
        "--total-timesteps",
        100_000,
        "--eval-frequency",
        25_000,
        cwd=workdir,
    )
    rows = read_eval_csv(run_dirs(workdir)[0])
    assert rows[0]["eval_return_mean"] < 50, rows
    assert rows[-1]["eval_return_mean"] >= 475, rows
