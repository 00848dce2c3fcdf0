"""benchmark.sh and benchmark/report.py: a tiny real sweep end to end, resume (skipping finished runs, continuing
checkpointed ones), failures, Slurm rendering, aggregation."""

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, read_eval_csv, read_summary

BENCHMARK = REPO / "benchmark.sh"
sys.path.insert(0, str(REPO / "benchmark"))
import report  # noqa: E402

# a few hundred DQN steps on CartPole: seconds per run, and every code path of the sweep
TINY = [
    "--total-timesteps",
    "300",
    "--learning-starts",
    "100",
    "--eval-frequency",
    "150",
    "--eval-episodes",
    "2",
]


def bench(*args, cwd, env_vars=None, timeout=300):
    """./benchmark.sh args in cwd; env_vars override the environment, a None value removes the variable."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env_vars or {})}
    env = {key: value for key, value in env.items() if value is not None}
    return subprocess.run(
        ["bash", str(BENCHMARK), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def args_id(*extra):
    """benchmark.sh's identity of a sweep's extra arguments: 8 hex digits of the SHA-256 of each argument + NUL."""
    return hashlib.sha256(b"".join(str(arg).encode() + b"\0" for arg in extra)).hexdigest()[:8]


def fake_expert(folder, expert_return=500.0, random_return=20.0):
    """The part of expert.json that the normalized score reads, so the tiny sweep has scores without a trained expert."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "expert.json").write_text(
        json.dumps(
            {
                "observation_shape": [4],
                "action_shape": [],
                "expert_return_mean": expert_return,
                "random_return_mean": random_return,
            }
        )
    )
    return folder


def finished_runs(workdir, prefix):
    return sorted(path.parent for path in (Path(workdir) / "runs").glob(f"{prefix}__*/summary.json"))


def test_sweep_report_and_resume(tmp_path):
    """dqn and dqn_double (a tagged variant: --double-q) on CartPole-v1, seeds 1-2, two workers; then report, re-run;
    then the same sweep with another budget, which must run anew and get its own report rows.

    One test, not a module fixture shared by several: pytest-xdist would build such a fixture once per worker."""
    expert = fake_expert(tmp_path / "expert")
    common = ["--algos", "dqn", "--env-ids", "CartPole-v1", "--seeds", 2, "--workers", 2, "--workdir", tmp_path]
    exp_names = {}
    for tag_args, variant_args in (([], []), (["--tag", "double"], ["--double-q"])):
        result = bench(*common, *tag_args, "--", *TINY, "--expert-path", expert, *variant_args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "2 finished now, 0 skipped (already finished), 0 failed" in result.stderr
        exp_names[f"dqn{'_double' if tag_args else ''}"] = (
            f"dqn{'_double' if tag_args else ''}@{args_id(*TINY, '--expert-path', expert, *variant_args)}"
        )
    for name, exp_name in exp_names.items():
        for seed in (1, 2):
            (run_dir,) = finished_runs(tmp_path, f"CartPole-v1__{exp_name}__{seed}")
            summary = read_summary(run_dir)
            assert summary["args"]["exp_name"] == exp_name and summary["args"]["seed"] == seed
            assert summary["args"]["total_timesteps"] == 300
            assert summary["args"]["double_q"] == (name == "dqn_double")
            rows = read_eval_csv(run_dir)
            assert [row["global_step"] for row in rows] == [0, 150, 300]
            assert all(np.isfinite(row["normalized_score"]) and np.isfinite(row["eval_return_mean"]) for row in rows)
            log = tmp_path / "benchmark" / "logs" / f"{exp_name}__CartPole-v1__{seed}.log"
            assert "final return" in log.read_text()
    # the machine and versions are recorded once per sweep, not in every summary.json
    records = [json.loads(path.read_text()) for path in sorted((tmp_path / "runs" / "sweeps").glob("*.json"))]
    assert len(records) == 2 and {record["args_id"] for record in records} == {
        name.split("@")[1] for name in exp_names.values()
    }
    for record in records:
        assert record["versions"]["torch"] and record["cpu"]["model"] and record["algos"] == ["dqn"] and record["seeds"] == 2
    assert "versions" not in summary and {"device", "precision", "commit"} <= set(summary)

    # aggregation: a row per algorithm with mean +/- sample std over seeds, best and last-20% scores, the commit, the
    # IQM, a learning-curve plot; the report goes to runs/report/ by default, never over a committed benchmark/results.md
    committed = tmp_path / "benchmark" / "results.md"
    committed.write_text("the committed report\n")
    result = bench("report", "--workdir", tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert committed.read_text() == "the committed report\n" and not (tmp_path / "benchmark" / "plots").exists()
    text = (tmp_path / "runs" / "report" / "results.md").read_text()
    for name, exp_name in exp_names.items():
        summaries = [read_summary(finished_runs(tmp_path, f"CartPole-v1__{exp_name}__{seed}")[0]) for seed in (1, 2)]
        scores = np.array([(s["final_return"] - 20.0) / 480.0 for s in summaries])
        np.testing.assert_allclose(scores, [s["final_normalized_score"] for s in summaries], rtol=1e-4)
        returns = np.array([s["final_return"] for s in summaries])
        curves = [
            [row["normalized_score"] for row in read_eval_csv(finished_runs(tmp_path, f"CartPole-v1__{exp_name}__{seed}")[0])]
            for seed in (1, 2)
        ]
        best = np.array([max(curve) for curve in curves])
        last = np.array([curve[-1] for curve in curves])  # 3 evaluations: the last 20% is the last one
        (commit,) = {s["commit"] for s in summaries}
        row = (
            f"| {name} | CartPole-v1 | 1, 2 | 300 | {scores.mean():.3f} ± {scores.std(ddof=1):.3f} (n=2) | "
            f"{best.mean():.3f} ± {best.std(ddof=1):.3f} | {last.mean():.3f} ± {last.std(ddof=1):.3f} | "
            f"{returns.mean():.1f} ± {returns.std(ddof=1):.1f} | "
        )
        assert row in text, text
        assert re.search(re.escape(row) + rf"\d+ \| [^|]+ \| {commit[:7]} \|\n", text), text  # steps/s, wall time, commit
        # IQM of two runs trims nothing: it is their mean
        assert f"| {name} | {scores.mean():.3f} | {best.mean():.3f} | {last.mean():.3f} | 2 | CartPole-v1 |" in text, text
    assert "![CartPole-v1](plots/CartPole-v1.png)" in text
    png = (tmp_path / "runs" / "report" / "plots" / "CartPole-v1.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    result = bench("report", "--workdir", tmp_path, "--output-dir", tmp_path / "benchmark", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # asked for: the committed report is replaced
    assert (
        committed.read_text().startswith("# cleanil benchmark results")
        and (tmp_path / "benchmark" / "plots" / "CartPole-v1.png").exists()
    )

    # the same sweep again: everything is finished, nothing runs, no log is touched
    before = sorted((tmp_path / "runs").iterdir())
    logs = {path: path.stat().st_mtime_ns for path in (tmp_path / "benchmark" / "logs").iterdir()}
    result = bench(*common, "--", *TINY, "--expert-path", expert, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 combinations: 0 to run, 2 already finished" in result.stderr
    assert "nothing to run" in result.stderr
    assert sorted((tmp_path / "runs").iterdir()) == before
    assert {path: path.stat().st_mtime_ns for path in logs} == logs

    # another budget is another sweep: nothing skipped, and the report never averages 300- and 450-step runs
    longer = [*TINY[:1], "450", *TINY[2:]]
    result = bench(*common, "--", *longer, "--expert-path", expert, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 combinations: 2 to run, 0 already finished" in result.stderr
    for seed in (1, 2):
        (run_dir,) = finished_runs(tmp_path, f"CartPole-v1__dqn@{args_id(*longer, '--expert-path', expert)}__{seed}")
        assert read_summary(run_dir)["args"]["total_timesteps"] == 450
    result = bench("report", "--workdir", tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "runs" / "report" / "results.md").read_text()
    for steps in (300, 450):
        assert f"| dqn [total_timesteps={steps}] | CartPole-v1 | 1, 2 | {steps} |" in text, text
    assert "| dqn_double | CartPole-v1 | 1, 2 | 300 |" in text and "| dqn | CartPole-v1 |" not in text, text


def test_failed_runs_are_reported_and_the_sweep_goes_on(tmp_path):
    # the bad env comes first: the CartPole run after it must still happen
    args = [
        "--algos",
        "dqn",
        "--env-ids",
        "NoSuchEnv-v0 CartPole-v1",
        "--seeds",
        1,
        "--workers",
        1,
        "--workdir",
        tmp_path,
        "--",
        *TINY,
    ]
    result = bench(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "1 finished now, 0 skipped (already finished), 1 failed" in result.stderr
    failures = result.stderr.split("failed runs")[1]
    dqn = f"dqn@{args_id(*TINY)}"
    log = tmp_path / "benchmark" / "logs" / f"{dqn}__NoSuchEnv-v0__1.log"
    assert f"dqn NoSuchEnv-v0 seed 1: exit 1, log {log}" in failures
    assert "error: unknown environment id 'NoSuchEnv-v0'" in failures  # the script's own sentence, from its log
    assert "--env-id NoSuchEnv-v0" in failures and "CartPole" not in failures
    assert "unknown environment id" in log.read_text()
    assert len(finished_runs(tmp_path, f"CartPole-v1__{dqn}__1")) == 1

    # the same command again retries only the failure
    again = bench(*args, cwd=tmp_path)
    assert again.returncode == 1
    assert "2 combinations: 1 to run, 1 already finished" in again.stderr
    assert len(finished_runs(tmp_path, f"CartPole-v1__{dqn}__1")) == 1

    # a flag the script does not know fails every run, each listed
    bad_flag = bench(
        "--algos",
        "dqn",
        "--env-ids",
        "CartPole-v1",
        "--seeds",
        2,
        "--workers",
        2,
        "--workdir",
        tmp_path / "bad",
        "--",
        "--no-such-flag",
        cwd=tmp_path,
    )
    assert bad_flag.returncode == 1, bad_flag.stderr
    assert "0 finished now, 0 skipped (already finished), 2 failed" in bad_flag.stderr
    failures = bad_flag.stderr.split("failed runs")[1]
    assert failures.count("Unrecognized options: --no-such-flag") == 2
    assert "dqn CartPole-v1 seed 1: exit 2" in failures and "dqn CartPole-v1 seed 2: exit 2" in failures
    assert not list((tmp_path / "bad").glob("runs/*/summary.json"))


def test_dry_run_prints_commands_and_skips_finished(tmp_path):
    extra = ["--total-timesteps", 1000, "--capture-video"]
    sac, dqn = f"sac@{args_id(*extra)}", f"dqn@{args_id(*extra)}"
    finished = tmp_path / "runs" / f"Pendulum-v1__{sac}__2__1700000000"
    other_args = tmp_path / "runs" / "Pendulum-v1__sac__1__1700000000"  # a direct run (other arguments): not this sweep's
    for folder in (finished, other_args):
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text("{}")
    # no OMP_NUM_THREADS exported: one run per core, the cores shared out
    result = bench(
        "--algos",
        "dqn sac",
        "--env-ids",
        "CartPole-v1 Pendulum-v1",
        "--seeds",
        2,
        "--workers",
        1,
        "--workdir",
        tmp_path,
        "--dry-run",
        "--",
        *extra,
        cwd=tmp_path,
        env_vars={"OMP_NUM_THREADS": None},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 7  # 2 algos x 2 envs x 2 seeds, less the finished one
    assert f"skip sac Pendulum-v1 seed 2: finished in runs/Pendulum-v1__{sac}__2__1700000000" in result.stderr
    cores = len(os.sched_getaffinity(0))
    for line in lines:
        assert line.startswith(f"cd {tmp_path} && OMP_NUM_THREADS={cores} MKL_NUM_THREADS={cores} MUJOCO_GL=")
        assert "--total-timesteps 1000 --capture-video > " in line and line.endswith(".log 2>&1")
    assert f"{REPO}/cleanil/sac.py --env-id Pendulum-v1 --seed 1 --exp-name {sac} " in result.stdout
    assert f"{REPO}/cleanil/dqn.py --env-id CartPole-v1 --seed 2 --exp-name {dqn} " in result.stdout
    assert "Pendulum-v1 --seed 2 --exp-name sac" not in result.stdout
    assert sorted((tmp_path / "runs").iterdir()) == sorted([finished, other_args])  # nothing ran
    # many workers on few cores: one thread each, never zero
    result = bench(
        "--algos",
        "dqn",
        "--env-ids",
        "CartPole-v1",
        "--workers",
        4 * cores,
        "--workdir",
        tmp_path,
        "--dry-run",
        cwd=tmp_path,
        env_vars={"OMP_NUM_THREADS": None},
    )
    assert "OMP_NUM_THREADS=1 " in result.stdout
    # a user's exported OMP_NUM_THREADS is respected, whatever the worker count
    for exported in ("1", "3"):
        result = bench(
            "--algos",
            "dqn",
            "--env-ids",
            "CartPole-v1",
            "--workers",
            1,
            "--workdir",
            tmp_path,
            "--dry-run",
            cwd=tmp_path,
            env_vars={"OMP_NUM_THREADS": exported},
        )
        assert f"OMP_NUM_THREADS={exported} MKL_NUM_THREADS={exported} " in result.stdout, result.stdout
    result = bench(
        "--algos",
        "dqn",
        "--env-ids",
        "CartPole-v1",
        "--workers",
        1,
        "--threads",
        2,
        "--workdir",
        tmp_path,
        "--dry-run",
        cwd=tmp_path,
        env_vars={"OMP_NUM_THREADS": "1"},
    )
    assert "OMP_NUM_THREADS=2 " in result.stdout  # --threads wins


def test_slurm_dry_run_renders_a_runnable_array(tmp_path):
    args = [
        "--algos",
        "dqn",
        "--env-ids",
        "CartPole-v1 Acrobot-v1",
        "--seeds",
        2,
        "--workdir",
        tmp_path,
        "--slurm",
        "--partition",
        "gpu",
        "--time",
        "02:00:00",
        "--mem",
        "4G",
        "--cpus-per-task",
        2,
        "--sbatch-args",
        "--gres=gpu:1 --account=lab",
        "--setup",
        "echo setup-line-ran",
        "--",
        *TINY,
    ]
    dry_args = args[: args.index("--")] + ["--dry-run"] + args[args.index("--") :]
    result = bench(*dry_args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    directives = re.findall(r"^#SBATCH (.*)$", script, re.M)
    for directive in (
        "--array=0-3",
        "--partition=gpu",
        "--time=02:00:00",
        "--mem=4G",
        "--cpus-per-task=2",
        "--gres=gpu:1",
        "--account=lab",
        f"--output={tmp_path}/benchmark/logs/slurm-%A_%a.out",
    ):
        assert directive in directives, script
    for env_id in ("CartPole-v1", "Acrobot-v1"):
        for seed in (1, 2):
            assert (
                f"{REPO}/cleanil/dqn.py --env-id {env_id} --seed {seed} --exp-name dqn@{args_id(*TINY)} --total-timesteps 300"
                in script
            )
    assert "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-2}" in script
    script_file = tmp_path / "array.sh"
    script_file.write_text(script)
    assert subprocess.run(["bash", "-n", str(script_file)], capture_output=True).returncode == 0
    assert not (tmp_path / "runs").exists()

    # task 1 is CartPole-v1 seed 2: run it as a Slurm node would
    task = subprocess.run(
        ["bash", str(script_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "1"},
    )
    assert task.returncode == 0, task.stdout + task.stderr
    assert "setup-line-ran" in task.stdout and "OMP_NUM_THREADS=1" in task.stdout
    (run_dir,) = finished_runs(tmp_path, f"CartPole-v1__dqn@{args_id(*TINY)}__2")
    assert np.isfinite(read_summary(run_dir)["final_return"])
    assert "final return" in (tmp_path / "benchmark" / "logs" / f"dqn@{args_id(*TINY)}__CartPole-v1__2.log").read_text()
    rerun = subprocess.run(
        ["bash", str(script_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_ARRAY_TASK_ID": "1"},
    )
    assert rerun.returncode == 0 and "already finished" in rerun.stdout
    assert len(finished_runs(tmp_path, f"CartPole-v1__dqn@{args_id(*TINY)}__2")) == 1

    # rendered again, the finished combination is left out of the array; --workers throttles it
    result = bench("--workers", 2, *dry_args, cwd=tmp_path)
    assert "#SBATCH --array=0-2%2" in result.stdout
    assert "CartPole-v1 --seed 2" not in result.stdout


def test_an_interrupted_run_continues_from_its_checkpoint(tmp_path):
    """cfil on Pendulum-v1 (the shipped expert): the sweep is interrupted (SIGINT to benchmark.sh, which stops its run:
    the run checkpoints on SIGTERM); the same command again continues that run with --resume instead of restarting."""
    cfil_tiny = [
        "--learning-starts",
        "100",
        "--density-update-every",
        "100",
        "--density-batch",
        "32",
        "--eval-frequency",
        "150",
        "--eval-episodes",
        "2",
        "--batch-size",
        "32",
        "--hidden-size",
        "32",
        "--flow-hidden-size",
        "32",
        "--refill-steps",
        "100",
        "--total-timesteps",
        "3000",
    ]
    command = [
        "bash",
        str(BENCHMARK),
        "--algos",
        "cfil",
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        "1",
        "--workers",
        "1",
        "--threads",
        "1",
        "--workdir",
        str(tmp_path),
        "--",
        *cfil_tiny,
    ]
    cfil = f"cfil@{args_id(*cfil_tiny)}"
    log = tmp_path / "benchmark" / "logs" / f"{cfil}__Pendulum-v1__1.log"
    env = {**os.environ, "PYTHON": sys.executable, "WANDB_MODE": "offline"}
    # SIGINT at its default in the sweep's shell, as in a terminal: pytest-xdist's workers ignore it, a child inherits
    # that, and bash cannot trap a signal that was ignored when it started
    sweep = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 240
        while (
            not list(tmp_path.glob("runs/*/eval.csv"))
            or len(next(tmp_path.glob("runs/*/eval.csv")).read_text().splitlines()) < 4
        ):
            assert sweep.poll() is None and time.time() < deadline, (
                sweep.communicate()[1][-3000:] if sweep.poll() is not None else "no evaluation"
            )
            time.sleep(0.2)
        sweep.send_signal(signal.SIGINT)
        _, stderr = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 130 and "interrupted: stopping 1 running run(s)" in stderr, stderr
    (run_dir,) = (tmp_path / "runs").glob("Pendulum-v1__*")  # runs/sweeps/ holds the sweep's record
    assert not (run_dir / "summary.json").exists()
    checkpoint = tmp_path / "checkpoints" / f"Pendulum-v1__{cfil}__1.pt"
    assert checkpoint.exists()

    result = bench(*command[2:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 combinations: 1 to run, 0 already finished" in result.stderr
    assert (
        f"start  [1/1] cfil Pendulum-v1 seed 1 -> {log} (resume from checkpoints/Pendulum-v1__{cfil}__1.pt)" in result.stderr
    )
    assert finished_runs(tmp_path, f"Pendulum-v1__{cfil}__1") == [run_dir]  # the same run folder, finished now
    steps = [row["global_step"] for row in read_eval_csv(run_dir)]
    assert steps[:3] == [0, 150, 300] and steps[-1] == 3000 and (np.diff(steps) > 0).all(), steps
    summary = read_summary(run_dir)
    assert summary["args"]["resume"] is True and summary["refill_env_steps"] == 100
    assert not checkpoint.exists()  # a finished run deletes its checkpoint
    text = log.read_text()  # the log keeps the interrupted part, the resumed one appended
    stopped = re.search(rf"stopped at step (\d+): continue from checkpoints/{re.escape(checkpoint.name)} with --resume", text)
    assert stopped and int(stopped[1]) >= 300, text  # stopped after the evaluation at step 300
    interrupted, resumed = text[: stopped.start()], text[stopped.end() :]
    # the resumed part refills the replay buffer, then goes on under the interrupted run's name from where it stopped
    device_line = re.compile(rf"^{re.escape(run_dir.name)}: \S+, (fp32|bf16-autocast)$", re.MULTILINE)
    assert device_line.search(interrupted) and device_line.search(resumed), text
    assert "refilling the replay buffer" in resumed and f"| {stopped[1]}/3000 [" in resumed, resumed
    assert "final return" not in interrupted and resumed.count("final return") == 1, text


def test_resume_is_passed_only_where_the_script_has_it_and_left_a_checkpoint(tmp_path):
    """Dry runs, local and Slurm, with a stand-in interpreter that prints its arguments; cfil and nail have --resume,
    bc does not."""
    fake_python = tmp_path / "fake-python"
    fake_python.write_text('#!/bin/bash\necho "fake-python $*"\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    sweep = args_id("--total-timesteps", 1000)
    # a direct run's checkpoint (exp_name cfil, other arguments) is not this sweep's: never resumed by it
    for prefix in (
        f"Pendulum-v1__cfil@{sweep}__1",
        f"Pendulum-v1__bc@{sweep}__1",
        f"Pendulum-v1__nail@{sweep}__2",
        "Pendulum-v1__cfil__2",
    ):
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / f"{prefix}.pt").write_bytes(b"")
    finished = tmp_path / "runs" / f"Pendulum-v1__nail@{sweep}__2__1700000000"  # finished: skipped, its checkpoint or not
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text("{}")
    args = [
        "--algos",
        "cfil nail bc",
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        2,
        "--workdir",
        tmp_path,
        "--python",
        fake_python,
        "--dry-run",
    ]
    result = bench(*args, "--", "--total-timesteps", 1000, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {
        re.search(r"cleanil/(\w+)\.py --env-id Pendulum-v1 --seed (\d)", line).groups(): line
        for line in result.stdout.strip().splitlines()
    }
    assert set(lines) == {("cfil", "1"), ("cfil", "2"), ("nail", "1"), ("bc", "1"), ("bc", "2")}
    assert lines["cfil", "1"].endswith(
        f"--total-timesteps 1000 --resume >> {tmp_path}/benchmark/logs/cfil@{sweep}__Pendulum-v1__1.log 2>&1"
    )
    for key in (("cfil", "2"), ("nail", "1"), ("bc", "1"), ("bc", "2")):
        assert "--resume" not in lines[key] and "--total-timesteps 1000 > " in lines[key], lines[key]

    # Slurm: each task decides when it runs, so a requeued task continues from the checkpoint its last attempt left
    result = bench(*args, "--slurm", "--", "--total-timesteps", 1000, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --array=0-4" in result.stdout and result.stdout.count("command+=(--resume)") == 3  # cfil and nail tasks
    script_file = tmp_path / "array.sh"
    script_file.write_text(result.stdout)

    def task_arguments(task, log_name):
        done = subprocess.run(
            ["bash", str(script_file)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SLURM_ARRAY_TASK_ID": str(task)},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return (tmp_path / "benchmark" / "logs" / log_name).read_text()

    assert task_arguments(0, f"cfil@{sweep}__Pendulum-v1__1.log").rstrip().endswith("--total-timesteps 1000 --resume")
    assert "--resume" not in task_arguments(1, f"cfil@{sweep}__Pendulum-v1__2.log")
    (tmp_path / "checkpoints" / f"Pendulum-v1__cfil@{sweep}__2.pt").write_bytes(b"")
    assert task_arguments(1, f"cfil@{sweep}__Pendulum-v1__2.log").rstrip().endswith("--total-timesteps 1000 --resume")
    assert "--resume" not in task_arguments(3, f"bc@{sweep}__Pendulum-v1__1.log")  # bc has no --resume, checkpoint or not


def test_slurm_submits_the_rendered_script(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"  # stands in for Slurm: records what it was given
    sbatch.write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/sbatch_args\necho "Submitted batch job 42"\n')
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    result = bench(
        "--algos",
        "dqn",
        "--env-ids",
        "CartPole-v1",
        "--seeds",
        3,
        "--workdir",
        tmp_path,
        "--slurm",
        "--",
        *TINY,
        cwd=tmp_path,
        env_vars={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert "Submitted batch job 42" in result.stdout
    (submitted,) = (tmp_path / "sbatch_args").read_text().split()
    assert Path(submitted).parent == tmp_path / "benchmark" / "logs"
    assert "#SBATCH --array=0-2" in Path(submitted).read_text()
    assert subprocess.run(["bash", "-n", submitted]).returncode == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algos", "nope", "--env-ids", "CartPole-v1"], "no script cleanil/nope.py; --algos takes script names, one of:"),
        (["--algos", "dqn"], "no environments; pass e.g. --env-ids"),
        (["--algos", "dqn", "--env-ids", "CartPole-v1", "--seeds", "0"], "--seeds must be a positive integer"),
        (["--algos", "dqn", "--env-ids", "CartPole-v1", "--", "--seed", "3"], "benchmark.sh sets --seed itself"),
        (
            ["--algos", "dqn", "--env-ids", "CartPole-v1", "--total-timesteps", "10"],
            "unknown option '--total-timesteps'; options for the scripts go after '--'",
        ),
        (
            ["--algos", "sac", "--env-ids", "Pendulum-v1", "--", "--resume"],
            "benchmark.sh passes --resume itself where WORKDIR/checkpoints/",
        ),
        (
            ["--algos", "sac", "--env-ids", "Pendulum-v1", "--", "--checkpoint-dir=ckpt"],
            "drop --checkpoint-dir from the extra args",
        ),
    ],
)
def test_bad_usage_is_one_sentence(tmp_path, args, message):
    result = bench(*args, "--workdir", tmp_path, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def test_interquartile_mean_trims_a_quarter_at_each_end():
    assert report.interquartile_mean([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # keeps 3, 4, 5, 6
    assert report.interquartile_mean([5, -100, 1, 2, 3]) == pytest.approx(2.0)  # floor(5/4)=1 cut at each end
    assert report.interquartile_mean([0.2, 0.4]) == pytest.approx(0.3)


def write_run(
    runs_dir, exp_name, env_id, seed, returns, scores, stamp=1700000000, finished=True, step=100, args=None, extra=None
):
    run_dir = runs_dir / f"{env_id}__{exp_name}__{seed}__{stamp}"
    run_dir.mkdir(parents=True)
    lines = ["global_step,eval_return_mean,eval_return_std,normalized_score,wall_time,sps"]
    lines += [f"{step * k},{r},0,{s},{k},50" for k, (r, s) in enumerate(zip(returns, scores))]
    (run_dir / "eval.csv").write_text("\n".join(lines) + "\n")
    if finished:
        (run_dir / "summary.json").write_text(
            json.dumps(
                {
                    "args": {
                        "exp_name": exp_name,
                        "env_id": env_id,
                        "seed": seed,
                        "total_timesteps": step * (len(returns) - 1),
                        **(args or {}),
                    },
                    "final_return": returns[-1],
                    "final_normalized_score": scores[-1],
                    "best_normalized_score": max(scores),
                    "total_wall_time_s": 90.0,
                    "mean_sps": 50.0,
                    **(extra or {}),
                }
            )
        )


def run_report(runs_dir, output_dir):
    """benchmark/report.py on runs_dir, which must succeed; its results.md."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmark" / "report.py"), "--runs-dir", runs_dir, "--output-dir", output_dir],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return (Path(output_dir) / "results.md").read_text()


def test_report_statistics_duplicates_and_return_fallback(tmp_path):
    runs = tmp_path / "runs"
    finals = {"EnvA-v0": [0.0, 0.5, 0.6, 1.0], "EnvB-v0": [0.2, 0.3, 0.9, 2.0]}
    for env_id, scores in finals.items():
        for seed, score in enumerate(scores, start=1):
            write_run(runs, "algo", env_id, seed, [0.0, 100 * score], [0.0, score])
    write_run(runs, "algo", "EnvA-v0", 1, [0.0, 999.0], [0.0, 9.99], stamp=1600000000)  # older duplicate of seed 1
    os.utime(runs / "EnvA-v0__algo__1__1600000000" / "summary.json", (1, 1))
    write_run(runs, "algo", "EnvA-v0", 5, [0.0, 5.0], [0.0, 0.05], finished=False)  # killed: no summary.json
    nan = float("nan")
    for seed in (1, 2):  # an env without expert.json: NaN scores
        write_run(runs, "other", "EnvC-v0", seed, [1.0, 10.0 * seed], [nan, nan])
    out = tmp_path / "out"
    text = run_report(runs, out)
    a = np.array(finals["EnvA-v0"])
    spread = f"{a.mean():.3f} ± {a.std(ddof=1):.3f}"  # two evaluations each, the second the best and the last 20%
    assert (
        f"| algo | EnvA-v0 | 1, 2, 3, 4 | 100 | {spread} (n=4) | {spread} | {spread} | {100 * a.mean():.1f} ± "
        f"{100 * a.std(ddof=1):.1f} | 50 | 1m30s | commit unknown |" in text
    ), text
    pooled = np.sort(np.concatenate(list(finals.values())))  # 8 runs: the IQM keeps the middle four
    iqm = f"{pooled[2:6].mean():.3f}"
    assert f"| algo | {iqm} | {iqm} | {iqm} | 8 | EnvA-v0, EnvB-v0 |" in text
    assert "| other | EnvC-v0 | 1, 2 | 100 | n/a (no expert.json) | n/a | n/a | 15.0 ± 7.1 |" in text  # std of 10, 20
    assert "| other | n/a (no expert.json) | n/a | n/a | 0 |" in text
    assert "### EnvC-v0 (returns: normalized score n/a for other, no expert.json)" in text
    assert "1 run folder(s) without summary.json (unfinished or failed) left out" in text
    assert "1 older duplicate run(s)" in text
    for env_id in finals.keys() | {"EnvC-v0"}:
        assert (out / "plots" / f"{env_id}.png").read_bytes().startswith(b"\x89PNG")

    # filters, and a clear error when nothing matches
    filtered = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmark" / "report.py"),
            "--runs-dir",
            runs,
            "--output-dir",
            out,
            "--env-ids",
            "EnvB-v0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert filtered.returncode == 0 and "EnvA-v0" not in (out / "results.md").read_text()
    empty = subprocess.run(
        [sys.executable, str(REPO / "benchmark" / "report.py"), "--runs-dir", runs, "--algos", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert empty.returncode != 0 and "Traceback" not in empty.stderr and "error: no finished runs" in empty.stderr


def test_report_keeps_settings_apart_and_diverged_runs_out(tmp_path, monkeypatch):
    """Runs of one exp_name with different arguments are different rows; a diverged run (NaN returns) is left out and
    named, not taken for a missing expert; bc (gradient steps) and a 10x-shorter budget get their own panels; a
    one-point curve is drawn as a marker."""
    runs, nan = tmp_path / "runs", float("nan")
    for seed in (1, 2):
        write_run(
            runs, "gail", "EnvA-v0", seed, [0.0, 50.0, 80.0], [0.0, 0.5, 0.8], step=100_000, args={"reward_type": "log_d"}
        )
        write_run(
            runs,
            "gail",
            "EnvA-v0",
            seed,
            [0.0, 10.0, 20.0],
            [0.0, 0.1, 0.2],
            step=100_000,
            stamp=1700000001,
            args={"reward_type": "gail"},
        )
        write_run(runs, "bc@1a2b3c4d", "EnvA-v0", seed, [0.0, 90.0], [0.0, 0.9], step=5_000)
        write_run(runs, "cfil@5e6f7a8b", "EnvA-v0", seed, [0.0, 60.0], [0.0, 0.6], step=10_000)
    write_run(runs, "cfil@5e6f7a8b", "EnvA-v0", 3, [0.0, nan], [0.0, nan], step=10_000)  # diverged
    write_run(runs, "dagger", "EnvA-v0", 1, [30.0], [0.3], step=0)  # evaluated at step 0 only
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)
    monkeypatch.setattr(sys, "argv", ["report.py", "--runs-dir", str(runs), "--output-dir", str(tmp_path / "out")])
    report.main()
    text = (tmp_path / "out" / "results.md").read_text()
    assert '| gail [reward_type="log_d"] | EnvA-v0 | 1, 2 | 200000 | 0.800 ± 0.000 (n=2) | 0.800 ± 0.000 |' in text, text
    assert '| gail [reward_type="gail"] | EnvA-v0 | 1, 2 | 200000 | 0.200 ± 0.000 (n=2) | 0.200 ± 0.000 |' in text, text
    # one variant: no @args-id in the label; bc learns from gradient steps, no env steps
    assert "| bc | EnvA-v0 | 1, 2 | 0 (5000 gradient steps) | 0.900 ± 0.000 (n=2) |" in text, text
    assert (
        "| cfil | EnvA-v0 | 1, 2, 3 | 10000 | 0.600 ± 0.000 (n=2) (2/3 seeds; the rest diverged) | 0.600 ± 0.000 | "
        "0.600 ± 0.000 | 60.0 ± 0.0 |" in text
    ), text
    assert "diverged (NaN final return), left out of the means, the IQM and the curves: cfil on EnvA-v0 seed 3" in text
    assert "no expert.json" not in text and "(returns:" not in text  # the NaN run did not switch the plot to returns
    (figure,) = figures
    panels = {
        ax.get_xlabel() + " " + str(int(max(np.max(line.get_xdata()) for line in ax.lines if "seed" in line.get_label()))): ax
        for ax in figure.axes
    }
    # environment steps: cfil (10k) and dagger (step 0) apart from gail (200k); bc alone on gradient steps
    assert sorted(panels) == ["environment steps 10000", "environment steps 200000", "gradient steps 5000"], sorted(panels)
    assert all(ax.get_ylabel().startswith("normalized score") for ax in figure.axes)
    short = {line.get_label().split(" (")[0]: line for line in panels["environment steps 10000"].lines}
    assert short["dagger"].get_marker() == "o" and list(short["dagger"].get_xdata()) == [0]
    assert np.isfinite(short["cfil"].get_ydata()).all() and short["cfil"].get_ydata()[-1] == pytest.approx(0.6)


def test_the_archived_runs_are_whole_and_unique(tmp_path):
    """benchmark/runs/ is the record of the runs the README reports (runs/ does not outlive a session): every archived
    run folder has a readable summary.json and eval.csv, no (setting, env, seed) is archived twice (the report would
    keep whichever a checkout happened to touch last), and the report builds from the archive alone."""
    archive = REPO / "benchmark" / "runs"
    runs, skipped = report.load_runs(archive)
    assert skipped == {"unfinished": 0, "replaced": 0, "unreadable": []}, skipped
    assert len(runs) == len([path for path in archive.iterdir() if path.is_dir()]) > 0
    for run in runs:
        summary, curve = run["summary"], run["curve"]
        # the summary's final numbers are its curve's last row, as every script writes them
        assert summary["final_return"] == pytest.approx(curve["eval_return_mean"][-1]), run["dir"]
    text = run_report(archive, tmp_path)
    # every archived (setting, env) is a row of the report, with the seeds archived for it
    seeds = {}
    for run in runs:
        seeds.setdefault((run["summary"]["args"]["exp_name"], run["summary"]["args"]["env_id"]), []).append(
            run["summary"]["args"]["seed"]
        )
    assert f"from {len(runs)} finished runs" in text, text
    lines = text.splitlines()
    for (exp_name, env_id), run_seeds in seeds.items():
        setting, row = f"| {exp_name.split('@')[0]} ", f" | {env_id} | {', '.join(map(str, sorted(run_seeds)))} | "
        assert any(line.startswith(setting) and row in line for line in lines), (setting, row)
    # seed 1 was resumed: its budget counts the 50000 steps that refilled its replay buffer
    assert "| cfil | Ant-v4 | 1, 2, 3 | seed 1: 370000 (50000 refill); seeds 2, 3: 320000 |" in text, text
    # every archived run has a commit: its own (summary.json) or the one that archived it
    unknown = [run["dir"] for run in runs if run["code"] == "commit unknown"]
    assert not unknown, unknown


def test_report_helpers_sample_std_last_fifth_and_iqm():
    """The spread is the sample std (ddof=1) with n, one seed has none; the last 20% of n evaluations are the last
    ceil(n/5); the IQM trims floor(n/4) at each end (scipy's trim_mean(x, 0.25), rliable's IQM)."""
    assert report.mean_std([0.2, 0.4, 0.9], 3, with_n=True) == "0.500 ± 0.361 (n=3)"  # ddof=0 would give 0.294
    assert report.mean_std([0.974], 3, with_n=True) == "0.974 (n=1)"
    assert report.last_fifth_mean(np.arange(11.0)) == pytest.approx(9.0)  # 8, 9, 10
    assert report.last_fifth_mean(np.arange(10.0)) == pytest.approx(8.5)  # 8, 9
    assert report.last_fifth_mean(np.arange(15.0)) == pytest.approx(13.0)  # 12, 13, 14 (15 / 5 is 3, not 4)
    assert report.last_fifth_mean([0.0, 0.7]) == pytest.approx(0.7)
    assert report.interquartile_mean(np.arange(1.0, 13.0)) == pytest.approx(6.5)  # 12 runs: keeps the middle six


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def test_report_sample_std_last_fifth_iqm_and_archived_commits(tmp_path):
    """On a small archive in a git repository: sample std with n, best and last-20% scores beside the final one (a run
    that collapsed shows), refill steps in the budget, each row's commits (summary.json's, else "archived in" the
    commit that added the run, "different commits" where they differ), the IQM over env x seed, and the headline
    table (CFIL, the Humanoid cell taken from the one cfil_allfeat setting named in HEADLINE_ROWS, "-" where no run)."""
    repo = tmp_path / "repo"
    runs = repo / "benchmark" / "runs"
    runs.mkdir(parents=True)
    git(repo, "init", "-q")
    one = {"num_expert_trajectories": 1}
    hopper = {  # 11 evaluations: the last 20% are the last 3; seed 1 peaks at 1.0 and collapses
        1: [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 0.9, 0.5, 0.2, 0.1, 0.3],
        2: [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.9, 0.95, 0.9, 1.0, 0.95],
    }
    ant = {1: [0.0, 0.5, 1.1], 2: [0.0, 0.4, 0.8], 3: [0.0, 0.2, 0.2]}  # 3 evaluations: the last 20% is the last one
    write_run(runs, "cfil", "Hopper-v4", 1, [1000 * x for x in hopper[1]], hopper[1], args=one)
    for seed, scores in ant.items():
        write_run(runs, "cfil", "Ant-v4", seed, [1000 * x for x in scores], scores, step=500, args=one)
    git(repo, "add", "benchmark")
    git(repo, "commit", "-q", "-m", "archive: cfil Hopper seed 1, Ant")
    first = git(repo, "log", "-1", "--format=%h")
    # seed 2 was resumed (50000 refill steps); its folder is archived later
    refill = {"refill_env_steps": 50000}
    write_run(runs, "cfil", "Hopper-v4", 2, [1000 * x for x in hopper[2]], hopper[2], args=one, extra=refill)
    git(repo, "add", "benchmark")
    git(repo, "commit", "-q", "-m", "archive: cfil Hopper seed 2")
    second = git(repo, "log", "-1", "--format=%h")
    assert first != second
    # not committed: one run that recorded its commit, one that did not (and no git history names it)
    ten, commit = {"num_expert_trajectories": 10}, {"commit": "0123456789abcdef" * 2}
    write_run(runs, "gail", "Hopper-v4", 1, [0.0, 500.0], [0.0, 0.5], args=ten, extra=commit)
    write_run(runs, "gail", "Hopper-v4", 2, [0.0, 700.0], [0.0, 0.7], args=ten)
    # Humanoid: the headline's cell is the 320k cfil_allfeat setting, not the 40k one
    write_run(runs, "cfil_allfeat", "Humanoid-v4", 1, [0.0, 80.0, 90.0], [0.0, 0.08, 0.09], step=160000, args=one)
    write_run(runs, "cfil_allfeat", "Humanoid-v4", 1, [0.0, 40.0, 50.0], [0.0, 0.04, 0.05], step=20000, stamp=2, args=one)

    text = run_report(runs, tmp_path / "out")

    def spread(values, n=False):
        values = np.asarray(values, dtype=np.float64)
        return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" + (f" (n={len(values)})" if n else "")

    h_final, h_best, h_last = [0.3, 0.95], [1.0, 1.0], [np.mean([0.2, 0.1, 0.3]), np.mean([0.9, 1.0, 0.95])]
    row = next(line for line in text.splitlines() if line.startswith("| cfil | Hopper-v4 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2:7] == [
        "1, 2",
        "seed 1: 1000; seed 2: 51000 (50000 refill)",
        f"{spread(h_final, True)}",
        spread(h_best),
        spread(h_last),
    ], row
    assert cells[7] == f"{np.mean(h_final) * 1000:.1f} ± {np.std(np.array(h_final) * 1000, ddof=1):.1f}", row
    assert cells[10] == f"different commits: archived in {first} (seed 1); archived in {second} (seed 2)", row
    assert spread(h_last) == "0.575 ± 0.530"  # the collapse of seed 1 shows beside its final 0.3 and best 1.0
    row = next(line for line in text.splitlines() if line.startswith("| cfil | Ant-v4 |"))
    assert "| cfil | Ant-v4 | 1, 2, 3 | 1000 | 0.700 ± 0.458 (n=3) | 0.700 ± 0.458 | 0.700 ± 0.458 |" in row, row
    assert row.endswith(f"| archived in {first} |"), row
    row = next(line for line in text.splitlines() if line.startswith("| gail | Hopper-v4 |"))
    assert row.endswith("| different commits: 0123456 (seed 1); commit unknown (seed 2) |"), row
    # IQM over env x seed: 5 cfil runs, floor(5/4) = 1 trimmed at each end
    finals, bests, lasts = h_final + [1.1, 0.8, 0.2], h_best + [1.1, 0.8, 0.2], h_last + [1.1, 0.8, 0.2]
    iqms = [np.sort(values)[1:4].mean() for values in (finals, bests, lasts)]
    assert f"| cfil | {iqms[0]:.3f} | {iqms[1]:.3f} | {iqms[2]:.3f} | 5 | Ant-v4, Hopper-v4 |" in text, text
    assert f"{iqms[0]:.3f}" == "0.683"

    # the headline: CFIL's cells where it has runs, "-" elsewhere; GAIL's Hopper cell; no BC row (no runs)
    headline = text.split("## Headline")[1].split("## Final scores")[0]
    lines = [line for line in headline.splitlines() if line.startswith("|")]
    envs = " | ".join(report.HEADLINE_ENVS)
    assert envs == "Hopper-v4 | HalfCheetah-v4 | Walker2d-v4 | Ant-v4 | Humanoid-v4"
    assert lines[0] == f"| method | demos | score | {envs} | IQM (env × seed) |"
    humanoid_iqm = np.sort(finals + [0.09])[1:5].mean()  # 6 runs with Humanoid's 320k run
    assert lines[2] == (
        f"| CFIL | 1 trajectory | final | {spread(h_final, True)} | - | - | 0.700 ± 0.458 (n=3) | 0.090 (n=1) ¹ | "
        f"{humanoid_iqm:.3f} (n=6) |"
    ), lines
    assert lines[3].startswith(f"|  |  | best | {spread(h_best, True)} | - | - |"), lines
    assert lines[4].startswith(f"|  |  | last 20% | {spread(h_last, True)} | - | - |"), lines
    assert lines[5] == "| GAIL | 10 trajectories | final | 0.600 ± 0.141 (n=2) | - | - | - | - | 0.600 (n=2) |", lines
    assert len(lines) == 2 + 3 + 3 and "BC" not in headline
    assert "¹ Humanoid-v4: `cfil_allfeat`" in headline
    assert f"Ant-v4 archived in {first}" in headline and "Humanoid-v4 commit unknown" in headline, headline
    assert "Hopper-v4 [seed 1: 1000; seed 2: 51000 (50000 refill)]" in " ".join(headline.split()), headline


def test_readme_results_block_is_what_the_report_makes_of_the_archive():
    """README.md's results block is `./benchmark.sh report --readme`'s output for benchmark/runs, byte for byte: a
    README number that is not the archive's fails here (regenerate with `./benchmark.sh report --readme`)."""
    archive = REPO / "benchmark" / "runs"
    block = report.readme_text_between_markers((REPO / "README.md").read_text())
    assert block is not None, f"README.md has no block between {report.README_START} and {report.README_END}"
    assert block == report.readme_block(archive), "README.md's results block is stale: run ./benchmark.sh report --readme"
    # and, without the report's code, CFIL Ant-v4's cell: its final scores' mean ± sample std
    finals = [json.loads(path.read_text())["final_normalized_score"] for path in archive.glob("Ant-v4__cfil__*/summary.json")]
    assert len(finals) >= 1 and f"{np.mean(finals):.3f} ± {np.std(finals, ddof=1):.3f} (n={len(finals)})" in block


def test_readme_rewrite_touches_only_the_marked_block(tmp_path):
    """`./benchmark.sh report --readme FILE` replaces a stale block and nothing else, a second run changes nothing,
    and a README without the markers, or filters that would leave runs out, are one-sentence errors."""
    readme = tmp_path / "README.md"
    before, after = "# title\n\nintro\n\n## Results\n\n<!-- results:start -->\n", "<!-- results:end -->\n\nmore text\n"
    readme.write_text(before + "| CFIL | 1 trajectory | final | 0.999 (n=1) |\n" + after)
    result = bench("report", "--readme", readme, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rewrote" in result.stdout
    assert readme.read_text() == before + report.readme_block(REPO / "benchmark" / "runs") + "\n" + after
    result = bench("report", "--readme", readme, cwd=tmp_path)
    assert result.returncode == 0 and "unchanged" in result.stdout, result.stdout + result.stderr
    for text, args, message in (
        ("no block here\n", [], "needs one line `<!-- results:start -->`"),
        (before + after, ["--algos", "cfil"], "drop --algos and --env-ids"),
    ):
        readme.write_text(text)
        result = bench("report", "--readme", readme, *args, cwd=tmp_path)
        assert result.returncode != 0 and result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and readme.read_text() == text


def test_episode_terms_records_each_episode_of_an_unchanged_script(tmp_path):
    """benchmark/episode_terms.py runs a script as is and writes one row per finished episode: the evaluation env's
    rows (gail.py makes it first) carry the env's reward terms, which add up to the return the script evaluated."""
    terms_file = tmp_path / "terms.jsonl"
    command = [sys.executable, str(REPO / "benchmark" / "episode_terms.py"), "--terms-file", str(terms_file)]
    command += [str(REPO / "cleanil" / "gail.py"), "--env-id", "Ant-v4", "--total-timesteps", "2048"]
    command += ["--eval-frequency", "2048", "--eval-episodes", "2", "--num-envs", "2"]
    result = subprocess.run(
        command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in terms_file.read_text().splitlines()]
    evaluation = [row for row in rows if row["env"] == 1]
    assert len(evaluation) == 4 and len(rows) > len(evaluation)
    returns = [sum(value for key, value in row.items() if key.startswith("reward_")) for row in evaluation[-2:]]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert np.mean(returns) == pytest.approx(read_eval_csv(run_dir)[-1]["eval_return_mean"], rel=1e-6)
    assert all(0 <= row["mean_abs_action"] <= 1 and row["length"] > 0 for row in rows)


def test_cfil_reward_probe_scores_the_demos_and_the_policy_s_states(tmp_path):
    """benchmark/cfil_reward_probe.py on the checkpoint of a short cfil.py run stopped by SIGTERM (a finished run deletes
    its own), given the run's arguments after --: both sets are scored, and every reward lies in cfil.py's range
    [0, 2 * squash bound] (shifted, squashed); arguments that do not fit the checkpoint are one error line."""
    flags = ["--env-id", "Pendulum-v1", "--total-timesteps", "1000000", "--learning-starts", "100", "--density-update-every"]
    flags += ["100", "--density-batch", "32", "--eval-frequency", "150", "--eval-episodes", "1", "--batch-size", "32"]
    flags += ["--hidden-size", "32", "--flow-hidden-size", "32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    run = subprocess.Popen(
        [sys.executable, str(REPO / "cleanil" / "cfil.py"), *flags],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not (paths := list(tmp_path.glob("runs/*/eval.csv"))) or len(paths[0].read_text().splitlines()) < 4:
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.time() < deadline, "the run never wrote its evaluations"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)  # after the evaluation at step 300: SAC and the flows have trained
        stderr = run.communicate(timeout=120)[1]
    finally:
        if run.poll() is None:
            run.kill()
    checkpoint = tmp_path / "checkpoints" / "Pendulum-v1__cfil__1.pt"
    stopped = re.search(r"stopped at step (\d+): continue from (\S+) with --resume", stderr)
    assert run.returncode == 128 + signal.SIGTERM and stopped and tmp_path / stopped[2] == checkpoint, stderr[-3000:]
    step = int(stopped[1])
    assert step >= 300 and checkpoint.exists()

    probe = [sys.executable, str(REPO / "benchmark" / "cfil_reward_probe.py"), str(checkpoint), "--steps", "300"]
    result = subprocess.run([*probe, "--", *flags], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"step {step}, expert demo 1:") and lines[1].startswith(f"step {step}, policy's states:")
    for line in lines[:2]:
        values = dict(pair.split(" ") for pair in line.split(": ", 1)[1].split(", "))
        assert 0.0 <= float(values["min"]) <= float(values["reward"]) <= float(values["max"]) <= 12.0, line
    assert "entropy term -alpha log pi" in lines[2]

    result = subprocess.run([*probe, "--", *flags[:-4]], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "does not fit these cfil.py arguments" in result.stderr and "after --" in result.stderr, result.stderr
