"""sac.py: the math of its losses on toy tensors, its update rate, and its outputs, resume and expert artefacts."""
import json
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script, validate_expert_folder

import sac

TINY = ["--env-id", "Pendulum-v1", "--learning-starts", "100", "--eval-frequency", "200", "--eval-episodes", "2",
        "--batch-size", "32", "--hidden-size", "32"]


def make_actor(env_id="Pendulum-v1"):
    torch.manual_seed(0)
    return sac.Actor(gym.make(env_id), 32, -5.0, 2.0)


def test_actor_log_prob_is_the_squashed_gaussian_density():
    actor = make_actor()
    obs = torch.randn(64, 3)
    torch.manual_seed(1)
    action, log_prob = actor.get_action(obs)
    mean, log_std = actor(obs)
    # the same density through torch's own change of variables: N -> tanh -> affine(scale=2 for Pendulum)
    squashed = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(actor.action_bias, actor.action_scale)])
    expected = squashed.log_prob(action.clamp(-2 + 1e-5, 2 - 1e-5)).sum(-1)
    torch.testing.assert_close(log_prob, expected, atol=2e-3, rtol=1e-3)
    assert (action.abs() <= 2).all()


def test_q_ensemble_matches_separate_critics():
    qf = sac.SoftQEnsemble(3, 1, 16, num_q=2)
    obs, action = torch.randn(5, 3), torch.randn(5, 1)
    q = qf(obs, action)
    for k in range(2):
        x = torch.cat([obs, action], -1)
        for layer, (weight, bias) in enumerate(zip(qf.weights, qf.biases)):
            x = x @ weight[k] + bias[k]
            x = torch.relu(x) if layer < 2 else x
        torch.testing.assert_close(q[k], x.squeeze(-1))
    assert not torch.allclose(q[0], q[1])  # independently initialised critics


def test_soft_q_loss_target_and_alpha_loss_direction():
    actor, qf = make_actor(), sac.SoftQEnsemble(3, 1, 16)
    batch = [torch.randn(8, 3), torch.rand(8, 1) * 4 - 2, torch.randn(8), torch.randn(8, 3), torch.zeros(8)]
    # gamma = 0: the target is the reward itself, so the loss is the plain regression error of both critics
    loss, q_values = sac.soft_q_loss(qf, qf, actor, batch, alpha=0.2, gamma=0.0)
    torch.testing.assert_close(loss, ((q_values - batch[2]) ** 2).mean(1).sum())
    # entropy below target (log pi high) -> minimising the loss raises alpha
    log_alpha = torch.zeros((), requires_grad=True)
    sac.alpha_loss(log_alpha, torch.full((8,), 5.0), target_entropy=-1.0).backward()
    assert log_alpha.grad < 0


def test_sac_update_rate(capsys):
    """The pure update rate of the Hopper-sized networks (batch 256, 256x256), reported in the README."""
    env = gym.make("Hopper-v4")
    args = sac.Args()
    actor = sac.Actor(env, 256, -5.0, 2.0)
    qf, qf_target = sac.SoftQEnsemble(11, 3, 256), sac.SoftQEnsemble(11, 3, 256)
    log_alpha = torch.zeros((), requires_grad=True)
    optimizers = [torch.optim.Adam(p, lr) for p, lr in ((qf.parameters(), 1e-3), (actor.parameters(), 3e-4), ([log_alpha], 1e-3))]
    rb = sac.ReplayBuffer(11, 3, 10_000, "cpu")
    for _ in range(1000):
        rb.add(np.random.randn(11), np.random.rand(3) * 2 - 1, 1.0, np.random.randn(11), False)
    for step in range(20):
        sac.sac_update(rb.sample(256), actor, qf, qf_target, log_alpha, *optimizers, args, -3.0, step)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as benchmark.sh runs it; several threads on a shared 2-core machine only spin
    try:
        start, n = time.time(), 200
        for step in range(n):
            stats = sac.sac_update(rb.sample(256), actor, qf, qf_target, log_alpha, *optimizers, args, -3.0, step)
        rate = n / (time.time() - start)
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        print(f"\nsac.py pure update rate (Hopper-v4 networks, batch 256, 1 thread): {rate:.0f} updates/s")
    assert all(torch.isfinite(value) for value in stats.values())
    assert rate > 10


def test_smoke_track_resume_and_outputs(workdir):
    run_script("sac.py", *TINY, "--total-timesteps", "600", "--checkpoint-frequency", "300", "--track", cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == [0, 200, 400, 600]
    assert all(np.isfinite(row["eval_return_mean"]) and row["eval_return_mean"] < 0 for row in rows)
    assert np.isnan(rows[0]["normalized_score"]) or np.isfinite(rows[0]["normalized_score"])
    summary = read_summary(run_dir)
    assert summary["mean_sps"] > 0 and summary["final_return"] == pytest.approx(rows[-1]["eval_return_mean"])
    assert list((workdir / "wandb").glob("offline-run-*")), "--track wrote no offline wandb run"

    checkpoint = torch.load(workdir / "checkpoints/Pendulum-v1__sac__1/checkpoint.pt", weights_only=False)
    assert checkpoint["global_step"] == 600 and checkpoint["rb"]["pos"] == 600
    run_script("sac.py", *TINY, "--total-timesteps", "1000", "--checkpoint-frequency", "300", "--resume", cwd=workdir)
    assert run_dirs(workdir) == [run_dir]  # the resumed run keeps its folder and appends to eval.csv
    assert [row["global_step"] for row in read_eval_csv(run_dir)] == [0, 200, 400, 600, 800, 1000]
    checkpoint_path = workdir / "checkpoints/Pendulum-v1__sac__1/checkpoint.pt"
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    assert checkpoint["global_step"] == 1000 and len(checkpoint["commands"]) == 2
    # only the 1,000 filled rows of the 1M-row replay buffer are saved (a saved slice would carry its whole storage)
    assert checkpoint_path.stat().st_size < 2_000_000

    # a run killed after evaluating past its last checkpoint: --resume rewinds eval.csv instead of duplicating rows
    with open(run_dir / "eval.csv", "a") as eval_csv:
        eval_csv.write("1200,-1,0,nan,1,1\n")
    run_script("sac.py", *TINY, "--total-timesteps", "1200", "--checkpoint-frequency", "300", "--resume", cwd=workdir)
    assert [row["global_step"] for row in read_eval_csv(run_dir)] == [0, 200, 400, 600, 800, 1000, 1200]
    mismatched = run_script("sac.py", *TINY, "--hidden-size", "64", "--resume", cwd=workdir, check=False)
    assert_clean_error(mismatched, "does not fit these arguments")


def test_save_expert_writes_the_schema_and_refuses_to_overwrite(workdir):
    expert = workdir / "experts" / "Pendulum-v1"
    flags = [*TINY, "--total-timesteps", "300", "--save-expert", "--expert-path", expert,
             "--expert-eval-episodes", "50", "--num-demo-episodes", "2"]
    run_script("sac.py", *flags, cwd=workdir)
    info, demos = validate_expert_folder(expert, min_demo_episodes=2, trained=False)
    assert info["algorithm"] == "sac" and info["training_steps"] == 300 and demos["actions"].shape[1:] == (1,)
    assert info["policy"]["output"] == "tanh" and info["policy"]["action_scale"] == [2.0]
    assert_clean_error(run_script("sac.py", *flags, cwd=workdir, check=False), "already exists", "--overwrite")


def test_bad_input(workdir):
    assert_clean_error(run_script("sac.py", "--env-id", "NoSuchEnv-v0", cwd=workdir, check=False), "unknown environment id")
    assert_clean_error(run_script("sac.py", "--env-id", "CartPole-v1", cwd=workdir, check=False), "continuous", "dqn.py")
    assert_clean_error(run_script("sac.py", *TINY, "--resume", cwd=workdir, check=False), "no checkpoint")
    wrong = workdir / "wrong"
    wrong.mkdir()
    (wrong / "expert.json").write_text(json.dumps({"observation_shape": [4], "action_shape": [], "expert_return_mean": 500,
                                                   "random_return_mean": 20}))
    result = run_script("sac.py", *TINY, "--expert-path", wrong, cwd=workdir, check=False)
    assert_clean_error(result, "observations (4,)", "python cleanil/sac.py --env-id Pendulum-v1 --save-expert")
    (wrong / "expert.json").write_text("{not json")
    assert_clean_error(run_script("sac.py", *TINY, "--expert-path", wrong, cwd=workdir, check=False), "malformed")


@pytest.mark.learning
def test_sac_learns_pendulum(workdir):
    run_script("sac.py", "--env-id", "Pendulum-v1", "--total-timesteps", "6000", "--learning-starts", "1000",
               "--eval-frequency", "3000", "--eval-episodes", "5", cwd=workdir)
    rows = read_eval_csv(run_dirs(workdir)[0])
    assert rows[0]["eval_return_mean"] < -900 and rows[-1]["eval_return_mean"] > -400, rows


def test_capture_video_records_the_first_episode_of_each_evaluation(workdir):
    run_script("sac.py", "--env-id", "InvertedPendulum-v4", "--total-timesteps", "200", "--learning-starts", "100",
               "--eval-frequency", "100", "--eval-episodes", "2", "--hidden-size", "32", "--capture-video",
               cwd=workdir, env_vars={"MUJOCO_GL": "egl"})
    videos = sorted((workdir / "videos").glob("*/*.mp4"))
    assert [video.name for video in videos] == [f"rl-video-episode-{i}.mp4" for i in (0, 2, 4)]
    assert all(video.stat().st_size > 1000 for video in videos)
