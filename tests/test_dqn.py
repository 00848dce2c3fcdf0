"""dqn.py: the TD target and the MountainCar shaping on toy inputs, and its outputs, resume and expert artefacts."""

import dqn
import numpy as np
import pytest
import torch

from conftest import assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script, validate_expert_folder

TINY = [
    "--learning-starts",
    "100",
    "--train-frequency",
    "4",
    "--gradient-steps",
    "1",
    "--eval-frequency",
    "200",
    "--eval-episodes",
    "2",
    "--hidden-size",
    "32",
]


def test_td_loss_target():
    q_network, target_network = dqn.QNetwork(4, 2, 16), dqn.QNetwork(4, 2, 16)
    obs, next_obs = torch.randn(8, 4), torch.randn(8, 4)
    actions, rewards, terminations = torch.randint(0, 2, (8,)), torch.randn(8), torch.tensor([0.0, 1.0] * 4)
    loss, q_values = dqn.td_loss(q_network, target_network, (obs, actions, rewards, next_obs, terminations), 0.9, False)
    with torch.no_grad():
        target = rewards + 0.9 * (1 - terminations) * target_network(next_obs).max(1).values
        expected_q = q_network(obs)[torch.arange(8), actions]
    torch.testing.assert_close(q_values, expected_q)
    torch.testing.assert_close(loss, ((expected_q - target) ** 2).mean())
    # Double DQN evaluates the online network's argmax with the target network
    _, _ = dqn.td_loss(q_network, target_network, (obs, actions, rewards, next_obs, terminations), 0.9, True)


def test_linear_schedule():
    assert dqn.linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert dqn.linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert dqn.linear_schedule(1.0, 0.1, 100, 500) == pytest.approx(0.1)


def test_mountain_car_shaping_telescopes():
    """Potential-based shaping adds gamma^T Phi(s_T) - Phi(s_0) to any trajectory's return: the optimal policy is kept."""
    rng = np.random.default_rng(0)
    states = np.stack([rng.uniform(-1.2, 0.6, 50), rng.uniform(-0.07, 0.07, 50)], 1)
    gamma, coef = 0.98, 100.0
    phi = dqn.mountain_car_potential(states, coef)
    shaping = gamma * phi[1:] - phi[:-1]
    discounted = (gamma ** np.arange(49) * shaping).sum()
    assert discounted == pytest.approx(gamma**49 * phi[-1] - phi[0])
    # the potential grows with height and with speed
    assert dqn.mountain_car_potential(np.array([0.5, 0.0]), 1) > dqn.mountain_car_potential(np.array([-0.5, 0.0]), 1)
    assert dqn.mountain_car_potential(np.array([-0.5, 0.05]), 1) > dqn.mountain_car_potential(np.array([-0.5, 0.0]), 1)


def test_smoke_track_resume_and_outputs(workdir):
    run_script("dqn.py", *TINY, "--total-timesteps", "600", "--checkpoint-frequency", "300", "--track", cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == [0, 200, 400, 600]
    assert all(np.isfinite(row["eval_return_mean"]) and row["eval_return_mean"] >= 8 for row in rows)
    assert read_summary(run_dir)["mean_sps"] > 0
    assert list((workdir / "wandb").glob("offline-run-*"))
    run_script("dqn.py", *TINY, "--total-timesteps", "800", "--checkpoint-frequency", "300", "--resume", cwd=workdir)
    assert [row["global_step"] for row in read_eval_csv(run_dir)] == [0, 200, 400, 600, 800]
    checkpoint = torch.load(workdir / "checkpoints/CartPole-v1__dqn__1/checkpoint.pt", weights_only=False)
    assert checkpoint["global_step"] == 800 and checkpoint["rb"]["pos"] == 800
    assert (workdir / "checkpoints/CartPole-v1__dqn__1/checkpoint.pt").stat().st_size < 2_000_000  # filled rows only
    with open(run_dir / "eval.csv", "a") as eval_csv:  # killed after evaluating past its checkpoint
        eval_csv.write("1000,9,0,nan,1,1\n")
    run_script("dqn.py", *TINY, "--total-timesteps", "1000", "--checkpoint-frequency", "300", "--resume", cwd=workdir)
    assert [row["global_step"] for row in read_eval_csv(run_dir)] == [0, 200, 400, 600, 800, 1000]
    assert_clean_error(
        run_script("dqn.py", *TINY, "--hidden-size", "64", "--resume", cwd=workdir, check=False), "does not fit"
    )


def test_shaped_mountain_car_and_save_expert(workdir):
    expert = workdir / "experts" / "MountainCar-v0"
    run_script(
        "dqn.py",
        *TINY,
        "--env-id",
        "MountainCar-v0",
        "--total-timesteps",
        "400",
        "--shaping-coef",
        "100",
        "--double-q",
        "--save-expert",
        "--expert-path",
        expert,
        "--expert-eval-episodes",
        "50",
        "--num-demo-episodes",
        "2",
        cwd=workdir,
    )
    info, demos = validate_expert_folder(expert, min_demo_episodes=2, trained=False)
    assert info["action_space"] == "discrete" and info["num_actions"] == 3 and demos["actions"].dtype == np.int64
    assert "shaping" in info["training"] and info["random_return_mean"] == -200  # the true reward, not the shaped one
    assert (demos["rewards"] == -1).all()


def test_bad_input(workdir):
    assert_clean_error(run_script("dqn.py", "--env-id", "NoSuchEnv-v0", cwd=workdir, check=False), "unknown environment id")
    assert_clean_error(run_script("dqn.py", "--env-id", "Pendulum-v1", cwd=workdir, check=False), "discrete", "sac.py")
    assert_clean_error(run_script("dqn.py", "--shaping-coef", "1", cwd=workdir, check=False), "MountainCar-v0 only")


@pytest.mark.learning
def test_dqn_learns_cartpole(workdir):
    run_script("dqn.py", "--total-timesteps", "50000", "--eval-frequency", "5000", "--checkpoint-frequency", "0", cwd=workdir)
    rows = read_eval_csv(run_dirs(workdir)[0])
    assert rows[0]["eval_return_mean"] < 100 and max(row["eval_return_mean"] for row in rows) >= 475, rows
