"""sac.py: the math of its losses on toy tensors, the wiring of its update, its outputs (policy.pt + policy.json) and
its checkpoint rules (save on SIGTERM, refuse to overwrite, resume with a refilled buffer, delete when finished)."""

import json
import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import sac
import torch
import torch.nn as nn

from conftest import SCRIPTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script

TINY = [
    "--env-id",
    "Pendulum-v1",
    "--learning-starts",
    "100",
    "--eval-frequency",
    "200",
    "--eval-episodes",
    "2",
    "--batch-size",
    "32",
    "--hidden-size",
    "32",
]


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
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(actor.action_bias, actor.action_scale)],
    )
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


def make_sac():
    torch.manual_seed(0)
    actor, qf, qf_target = make_actor(), sac.SoftQEnsemble(3, 1, 16), sac.SoftQEnsemble(3, 1, 16)
    qf_target.load_state_dict(qf.state_dict())
    log_alpha = torch.zeros((), requires_grad=True)
    optimizers = {
        "q": sac.make_optimizer(qf.parameters(), 1e-3, torch.device("cpu")),
        "actor": sac.make_optimizer(actor.parameters(), 3e-4, torch.device("cpu")),
        "alpha": sac.make_optimizer([log_alpha], 1e-3, torch.device("cpu")),
    }
    batch = [torch.randn(8, 3), torch.rand(8, 1) * 4 - 2, torch.randn(8), torch.randn(8, 3), torch.zeros(8)]
    return batch, actor, qf, qf_target, log_alpha, optimizers


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def test_sac_update_reads_its_rates_from_args():
    batch, actor, qf, qf_target, log_alpha, optimizers = make_sac()
    args = sac.Args(policy_frequency=2, target_network_frequency=1, tau=0.5)
    actor_before, qf_before, target_before = snapshot(actor), snapshot(qf), snapshot(qf_target)
    # an odd step: critics and targets move, the actor and alpha wait for the delayed update
    stats = sac.sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, global_step=1)
    assert set(stats) == {"losses/qf_loss", "losses/qf1_values"}
    assert all(torch.equal(a, b) for a, b in zip(actor_before, snapshot(actor))) and log_alpha.item() == 0
    assert not any(torch.equal(a, b) for a, b in zip(qf_before, snapshot(qf)))
    # Polyak averaging toward the updated critics with tau = 0.5
    for old, new, online in zip(target_before, snapshot(qf_target), snapshot(qf)):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * online)
    # an even step: the actor and alpha (autotuned, entropy target -|A| = -1) move too
    stats = sac.sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, global_step=2)
    assert {"losses/actor_loss", "losses/alpha", "charts/entropy"} <= set(stats) and log_alpha.item() != 0
    assert not any(torch.equal(a, b) for a, b in zip(actor_before, snapshot(actor)))
    # --no-autotune keeps alpha; target_network_frequency 2 skips the target update on an odd step
    frozen = sac.Args(autotune=False, target_network_frequency=2)
    alpha, target_before = log_alpha.item(), snapshot(qf_target)
    sac.sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, frozen, global_step=3)
    assert all(torch.equal(a, b) for a, b in zip(target_before, snapshot(qf_target)))
    sac.sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, frozen, global_step=4)
    assert log_alpha.item() == alpha


def test_the_critic_target_bootstraps_from_the_target_network():
    batch, actor, qf, qf_target, *_ = make_sac()
    with torch.no_grad():
        for p in qf_target.parameters():
            p.add_(1.0)  # a target that differs from the online critics
    torch.manual_seed(3)
    loss_target, _ = sac.soft_q_loss(qf, qf_target, actor, batch, alpha=0.2, gamma=0.99)
    torch.manual_seed(3)
    loss_online, _ = sac.soft_q_loss(qf, qf, actor, batch, alpha=0.2, gamma=0.99)
    assert not torch.allclose(loss_target, loss_online)
    # alpha enters the target as the entropy bonus: with alpha 0 the loss changes
    torch.manual_seed(3)
    assert not torch.allclose(sac.soft_q_loss(qf, qf_target, actor, batch, alpha=0.0, gamma=0.99)[0], loss_target)


@pytest.mark.benchmark
@pytest.mark.parametrize("env_id", ["Hopper-v4", "Humanoid-v4"])
def test_sac_update_rate(env_id, capsys):
    """Updates per second of one thread, float32 and --bf16 side by side (README, Speed): bf16 must not be slower
    where the hardware has it."""
    env = gym.make(env_id)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as benchmark.sh runs it; several threads on a shared 2-core machine only spin
    rates = {}
    try:
        for bf16 in (False, True) if sac.bf16_is_fast(torch.device("cpu")) else (False,):
            torch.manual_seed(0)
            actor = sac.Actor(env, 256, -5.0, 2.0)
            qf, qf_target = sac.SoftQEnsemble(obs_dim, action_dim, 256), sac.SoftQEnsemble(obs_dim, action_dim, 256)
            log_alpha = torch.zeros((), requires_grad=True)
            optimizers = {
                name: sac.make_optimizer(params, lr, torch.device("cpu"))
                for name, params, lr in (
                    ("q", qf.parameters(), 1e-3),
                    ("actor", actor.parameters(), 3e-4),
                    ("alpha", [log_alpha], 1e-3),
                )
            }
            rb = sac.ReplayBuffer(obs_dim, action_dim, 10_000, "cpu")
            for _ in range(1000):
                rb.add(np.random.randn(obs_dim), np.random.rand(action_dim) * 2 - 1, 1.0, np.random.randn(obs_dim), False)
            for step in range(20):
                sac.sac_update(rb.sample(256), actor, qf, qf_target, log_alpha, optimizers, sac.Args(), step, bf16)
            start, n = time.process_time(), 200
            for step in range(n):
                stats = sac.sac_update(rb.sample(256), actor, qf, qf_target, log_alpha, optimizers, sac.Args(), step, bf16)
            rates["bf16" if bf16 else "fp32"] = n / (time.process_time() - start)
            assert all(torch.isfinite(value) for value in stats.values())
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        print(
            f"\nsac.py update rate ({env_id} networks, batch 256, 1 thread, CPU time): "
            + ", ".join(f"{k} {v:.0f} updates/s" for k, v in rates.items())
        )
    assert rates.get("bf16", rates["fp32"]) >= rates["fp32"]


def load_policy(run_dir):
    """policy.json's spec rebuilt as demos.py's ExpertPolicy does, without importing sac: obs -> action (np)."""
    info = json.loads((run_dir / "policy.json").read_text())
    spec, layers = info["policy"], []
    for fan_in, fan_out in zip(spec["layers"][:-1], spec["layers"][1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    mlp = nn.Sequential(*layers[:-1])
    mlp.load_state_dict(torch.load(run_dir / spec["file"], weights_only=True))

    @torch.no_grad()
    def act(obs):
        mean = mlp(torch.as_tensor(obs, dtype=torch.float32))
        return (torch.tanh(mean) * torch.tensor(spec["action_scale"]) + torch.tensor(spec["action_bias"])).numpy()

    return info, act


def test_smoke_track_outputs_and_policy(workdir):
    checkpoints = workdir / "checkpoints"
    # a checkpoint nearly every step: the finished run must still leave none behind
    run_script("sac.py", *TINY, "--total-timesteps", "600", "--checkpoint-minutes", "1e-6", "--track", cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == [0, 200, 400, 600]
    assert all(np.isfinite(row["eval_return_mean"]) and row["eval_return_mean"] < 0 for row in rows)
    # the shipped experts/Pendulum-v1 (found next to cleanil/, not in the cwd) normalizes every row
    assert all(np.isfinite(row["normalized_score"]) and row["normalized_score"] < 0.5 for row in rows)
    summary = read_summary(run_dir)
    assert summary["mean_sps"] > 0 and summary["final_return"] == pytest.approx(rows[-1]["eval_return_mean"])
    assert summary["precision"] == ("bf16-autocast" if sac.bf16_is_fast(torch.device("cpu")) else "fp32")
    assert summary["refill_env_steps"] == 0
    assert list((workdir / "wandb").glob("offline-run-*")), "--track wrote no offline wandb run"
    assert not list(checkpoints.glob("*")), "a finished run keeps its checkpoint"

    # policy.pt + policy.json: the best evaluation's actor as a plain MLP that replays that evaluation's return
    info, act = load_policy(run_dir)
    best = max(rows, key=lambda row: row["eval_return_mean"])
    assert info["env_id"] == "Pendulum-v1" and info["algorithm"] == "sac" and info["snapshot"] == "best"
    assert info["snapshot_step"] == best["global_step"] and info["best_eval_return"] == pytest.approx(best["eval_return_mean"])
    assert info["training_steps"] == 600 and info["refill_env_steps"] == 0 and info["seed"] == 1
    assert "cleanil/sac.py" in info["command"] and info["training_wall_time_s"] > 0
    spec = info["policy"]
    assert spec["layers"] == [3, 32, 32, 1] and spec["activation"] == "relu" and spec["output"] == "tanh"
    assert spec["action_scale"] == [2.0] and spec["action_bias"] == [0.0]
    returns = sac.evaluate(act, sac.make_env("Pendulum-v1", 10_001), 2, 10_001)
    assert returns.mean() == pytest.approx(best["eval_return_mean"], rel=1e-4)

    # --snapshot final: the last actor, which replays the last evaluation
    run_script("sac.py", *TINY, "--total-timesteps", "400", "--snapshot", "final", "--seed", "2", cwd=workdir)
    run_dir = next(path for path in run_dirs(workdir) if "__2__" in path.name)
    info, act = load_policy(run_dir)
    assert info["snapshot"] == "final" and info["snapshot_step"] == 400
    returns = sac.evaluate(act, sac.make_env("Pendulum-v1", 10_002), 2, 10_002)
    assert returns.mean() == pytest.approx(read_eval_csv(run_dir)[-1]["eval_return_mean"], rel=1e-4)


def start_and_stop(flags, cwd, rows, stop_signal=signal.SIGTERM):
    """sac.py flags in its own process, stopped by stop_signal once eval.csv holds `rows` rows: (exit status, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, str(SCRIPTS / "sac.py"), *map(str, flags)]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (paths := list(cwd.glob("runs/*/eval.csv"))) or len(paths[0].read_text().splitlines()) <= rows:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the run never wrote its evaluations"
            time.sleep(0.2)
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_checkpoint_rules(workdir):
    """Saved when stopped (exit 128 + signal); a fresh run refuses to overwrite it; --resume refills the buffer, counts
    refill_env_steps and rewinds eval.csv to the checkpoint; a finished run deletes it; nothing to resume is an error."""
    flags = [*TINY, "--checkpoint-dir", "ckpt"]
    path = workdir / "ckpt" / "Pendulum-v1__sac__1.pt"
    assert_clean_error(run_script("sac.py", *flags, "--resume", cwd=workdir, check=False), "no checkpoint", str(path.name))
    code, stderr = start_and_stop([*flags, "--total-timesteps", "1000000"], workdir, rows=2)
    assert code == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr[-3000:]
    assert "--resume" in stderr.splitlines()[-1], stderr[-500:]
    checkpoint = torch.load(path, weights_only=False)
    progress = checkpoint["progress"]
    assert set(progress) == {"global_step", "run_name", "eval_rows", "wall_time", "refill_env_steps"}
    step, (run_dir,) = progress["global_step"], run_dirs(workdir)
    assert step >= 200 and progress["run_name"] == run_dir.name and progress["refill_env_steps"] == 0
    assert [row["global_step"] for row in progress["eval_rows"]] == list(range(0, step + 1, 200))
    assert path.stat().st_size < 200_000  # networks, optimisers and counters: no replay buffer

    # a fresh run refuses to start over the interrupted one, and creates nothing
    refused = run_script("sac.py", *flags, "--total-timesteps", "600", cwd=workdir, check=False)
    assert_clean_error(refused, "holds an interrupted run's checkpoint", "--resume")
    assert run_dirs(workdir) == [run_dir]
    # other networks than the checkpoint's: one line, no traceback
    assert_clean_error(
        run_script("sac.py", *TINY[:-1], "64", "--checkpoint-dir", "ckpt", "--resume", cwd=workdir, check=False),
        "does not fit",
    )

    # a killed run may have evaluated past its checkpoint: --resume rewinds eval.csv instead of duplicating rows
    with open(run_dir / "eval.csv", "a") as eval_csv:
        eval_csv.write(f"{step + 200},-1,0,nan,1,1\n")
    total = step + 400
    run_script("sac.py", *flags, "--total-timesteps", total, "--resume", "--refill-steps", "150", cwd=workdir)
    assert run_dirs(workdir) == [run_dir]  # the resumed run keeps its folder
    expected = sorted(set(range(0, total + 1, 200)) | {total})
    assert [row["global_step"] for row in read_eval_csv(run_dir)] == expected
    assert read_summary(run_dir)["refill_env_steps"] == 150
    assert json.loads((run_dir / "policy.json").read_text())["refill_env_steps"] == 150
    assert not path.exists(), "a finished run keeps its checkpoint"
    assert_clean_error(run_script("sac.py", *flags, "--resume", cwd=workdir, check=False), "no checkpoint")


def test_bad_input(workdir):
    assert_clean_error(run_script("sac.py", "--env-id", "NoSuchEnv-v0", cwd=workdir, check=False), "unknown environment id")
    assert_clean_error(run_script("sac.py", "--env-id", "CartPole-v1", cwd=workdir, check=False), "continuous", "dqn.py")
    assert_clean_error(run_script("sac.py", *TINY, "--batch-size", "0", cwd=workdir, check=False), "--batch-size")
    too_short = run_script("sac.py", *TINY, "--total-timesteps", "100", cwd=workdir, check=False)
    assert_clean_error(too_short, "--total-timesteps 100 must exceed --learning-starts 100")
    assert not (workdir / "runs").exists()


@pytest.mark.learning
@pytest.mark.parametrize("precision", ["--no-bf16", "--bf16"])
@pytest.mark.parametrize("env_id, steps, bar", [("Pendulum-v1", 6000, -400), ("InvertedPendulum-v4", 16000, 950)])
def test_bf16_learns_as_fp32(env_id, steps, bar, precision, workdir):
    """Seeded paired runs (seed 1), float32 and --bf16, each must reach the bar: mixed precision must not cost return.
    (Measured, InvertedPendulum-v4 evaluated every 1,000 steps on the EPYC machine: 1000 from 14,000 steps to 20,000 in
    float32, from 10,000 with bf16; every 5,000 on the AMX machine: 1000 at 15,000 and 20,000 in float32, from 10,000
    with bf16. Hence 16,000 steps, evaluated at 8, 12 and 16k.)"""
    run_script(
        "sac.py",
        "--env-id",
        env_id,
        "--total-timesteps",
        steps,
        "--learning-starts",
        "1000",
        "--eval-frequency",
        steps // 4,
        "--eval-episodes",
        "5",
        precision,
        cwd=workdir,
    )
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    expected = "bf16-autocast" if precision == "--bf16" and sac.bf16_is_fast(torch.device("cpu")) else "fp32"
    assert read_summary(run_dir)["precision"] == expected
    assert rows[0]["eval_return_mean"] < bar and max(row["eval_return_mean"] for row in rows[2:]) >= bar, rows


@pytest.mark.learning
def test_resume_without_buffer_still_learns(workdir):
    """Pendulum-v1 stopped after 3,000 steps and resumed (buffer refilled, not restored) still reaches the bar at 6,000."""
    flags = ["--env-id", "Pendulum-v1", "--learning-starts", "1000", "--eval-frequency", "1500", "--eval-episodes", "5"]
    code, stderr = start_and_stop([*flags, "--total-timesteps", "6000"], workdir, rows=3)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    run_script("sac.py", *flags, "--total-timesteps", "6000", "--resume", "--refill-steps", "1000", cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == [0, 1500, 3000, 4500, 6000]
    # reached after the resume (5 eval episodes of Pendulum: one unlucky start can sink a single evaluation)
    assert rows[0]["eval_return_mean"] < -900 and max(row["eval_return_mean"] for row in rows[3:]) > -400, rows
    assert read_summary(run_dir)["refill_env_steps"] == 1000


def test_capture_video_records_the_first_episode_of_each_evaluation(workdir):
    run_script(
        "sac.py",
        "--env-id",
        "InvertedPendulum-v4",
        "--total-timesteps",
        "200",
        "--learning-starts",
        "100",
        "--eval-frequency",
        "100",
        "--eval-episodes",
        "2",
        "--hidden-size",
        "32",
        "--capture-video",
        cwd=workdir,
        env_vars={"MUJOCO_GL": "egl"},
    )
    videos = sorted((workdir / "videos").glob("*/*.mp4"))
    assert [video.name for video in videos] == [f"rl-video-episode-{i}.mp4" for i in (0, 2, 4)]
    assert all(video.stat().st_size > 1000 for video in videos)
