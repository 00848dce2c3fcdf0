"""benchmark.sh --slurm: which Python a task runs (rendered scripts run as a Slurm node would), and the whole path
against a real single-node Slurm brought up by benchmark/slurm_local.sh (marked `slurm`; skipped with the reason when
this machine has no Slurm or cannot run one; CLEANIL_REQUIRE_SLURM=1 turns those skips into failures)."""

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_benchmark import BENCHMARK, args_id, finished_runs

from conftest import REPO, read_eval_csv, read_summary

SLURM_LOCAL = REPO / "benchmark" / "slurm_local.sh"
# accepted by dqn and sqil alike (the extra args go to every script): seconds per run on one thread
TINY_BOTH = [
    "--total-timesteps",
    "300",
    "--learning-starts",
    "100",
    "--eval-frequency",
    "150",
    "--eval-episodes",
    "2",
    "--batch-size",
    "32",
    "--hidden-size",
    "32",
]


def submit_env(**overrides):
    """The environment of a user whose shell has no virtualenv active: python3 on PATH is not the test's Python (it
    lacks gymnasium, torch), so only --setup can give the tasks the right one."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHON", "VIRTUAL_ENV")}
    venv_bin = str(Path(sys.prefix) / "bin")
    if sys.prefix != sys.base_prefix:
        env["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep) if d and Path(d) != Path(venv_bin))
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **overrides}


def setup_line():
    """The --setup that gives a task the test's Python: the venv pattern (`source .venv/bin/activate`)."""
    if sys.prefix != sys.base_prefix:
        return f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}"
    return f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"


def benchmark(*args, cwd, env, timeout=120):
    return subprocess.run(
        ["bash", str(BENCHMARK), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_slurm_task_runs_the_python_its_setup_provides(tmp_path):
    """No --python, no $PYTHON: the rendered script names no interpreter path of the submitting machine; each task
    runs the python3 that its environment has after --setup, and says which; without one it fails in one sentence."""
    fake_bin = tmp_path / "site-python" / "bin"  # stands in for a module's or a venv's bin/
    fake_bin.mkdir(parents=True)
    (fake_bin / "python3").write_text(
        '#!/bin/bash\n[[ "$1" == -V ]] && { echo "Python 3.99 (site)"; exit; }\necho "site-python $*"\n'
    )
    (fake_bin / "python3").chmod(0o755)
    args = [
        "--algos",
        "dqn sqil",
        "--env-ids",
        "CartPole-v1",
        "--seeds",
        1,
        "--workdir",
        tmp_path,
        "--slurm",
        "--dry-run",
        "--setup",
        f"export PATH={fake_bin}:$PATH",
    ]
    result = benchmark(*args, "--", *TINY_BOTH, cwd=tmp_path, env=submit_env())
    assert result.returncode == 0, result.stderr
    script = result.stdout
    login_python = shutil.which("python3", path=submit_env()["PATH"])
    assert re.search(r"^python=\$\(command -v python3 \|\| command -v python\)", script, re.M), script
    assert script.index(f"export PATH={fake_bin}:$PATH") < script.index("python=$(command -v python3")  # after --setup
    commands = re.findall(r"^\s+command=\((.*)\)$", script, re.M)
    assert len(commands) == 2 and all(command.startswith('"$python" ') for command in commands), commands
    for path in {login_python, sys.executable, os.path.realpath(sys.executable)} - {None}:
        assert path not in script, path
    script_file = tmp_path / "array.sh"
    script_file.write_text(script)

    task = subprocess.run(
        ["bash", str(script_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**submit_env(), "SLURM_ARRAY_TASK_ID": "1"},
    )
    assert task.returncode == 0, task.stdout + task.stderr
    assert f"python: {fake_bin}/python3 (Python 3.99 (site))" in task.stdout
    log = tmp_path / "benchmark" / "logs" / f"sqil@{args_id(*TINY_BOTH)}__CartPole-v1__1.log"
    assert log.read_text().startswith(f"site-python {REPO}/cleanil/sqil.py --env-id CartPole-v1 --seed 1 ")

    # a setup that provides no Python: the task says so instead of running something else
    script_file.write_text(script.replace(f"export PATH={fake_bin}:$PATH", "PATH=/nonexistent"))
    task = subprocess.run(
        ["/bin/bash", str(script_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**submit_env(), "SLURM_ARRAY_TASK_ID": "0"},
    )
    assert task.returncode == 2, task.stdout + task.stderr
    assert (
        "error: dqn CartPole-v1 seed 1: no working Python ('no python3 on PATH'); give ./benchmark.sh a --setup" in task.stderr
    )

    # an explicit --python is used as given, by every task
    result = benchmark(*args, "--python", fake_bin / "python3", "--", *TINY_BOTH, cwd=tmp_path, env=submit_env())
    assert result.returncode == 0, result.stderr
    assert f"\npython={fake_bin}/python3 # --python" in result.stdout


# ------------------------------------------------------------------------------------------------ a real Slurm


def unavailable(reason):
    """Skip: this machine cannot run Slurm. With CLEANIL_REQUIRE_SLURM=1 (a machine known to run it) that is a failure."""
    if os.environ.get("CLEANIL_REQUIRE_SLURM") == "1":
        pytest.fail(f"CLEANIL_REQUIRE_SLURM=1, but {reason}")
    pytest.skip(reason)


@pytest.fixture
def slurm_cluster():
    """A single-node Slurm: the one benchmark/slurm_local.sh left up, else one brought up now and torn down after."""
    if shutil.which("sbatch") is None:
        unavailable(
            "sbatch not found: Slurm is not installed (benchmark/slurm_local.sh install, as root, installs "
            "Debian's slurmctld slurmd slurm-client munge; .ci/run does it)"
        )
    sudo = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
            unavailable("benchmark/slurm_local.sh needs root (slurmd runs as root), and sudo -n is not available")
        sudo = ["sudo", "-n"]
    local = [*sudo, "bash", str(SLURM_LOCAL)]
    if subprocess.run([*local, "status"], capture_output=True, text=True, timeout=60).returncode == 0:
        yield "already up"  # someone's running cluster: used as is, left up
        return
    try:
        up = subprocess.run([*local, "up"], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as error:
        subprocess.run([*local, "down"], capture_output=True, timeout=120)
        unavailable(f"benchmark/slurm_local.sh up did not finish in 600 s: {(error.stderr or b'')[-2000:]!r}")
    if up.returncode == 3:  # this machine cannot run it (a Slurm of its own, no root, daemons that cannot start here)
        subprocess.run([*local, "down"], capture_output=True, timeout=120)  # up leaves nothing behind; to be sure
        unavailable(f"benchmark/slurm_local.sh up: {up.stderr.strip()[-3000:]}")
    assert up.returncode == 0, f"benchmark/slurm_local.sh up exited {up.returncode}:\n{up.stderr}"
    try:
        yield "brought up"
    finally:
        down = subprocess.run([*local, "down"], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert subprocess.run([*local, "status"], capture_output=True, timeout=60).returncode == 1, "the cluster is still up"


def submitted_job(result):
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Submitted batch job (\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


def array_tasks(job_id):
    """squeue's view of every task of an array job, finished ones included: {task id: (job id, state)}."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%K|%A|%T"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return {int(task): (raw, state) for task, raw, state in (line.split("|") for line in out.split())}


def wait_for_array(job_id, expected_tasks, deadline_s=900):
    """Poll until the array has left the queue; returns the most tasks seen running at once. A task takes seconds, but
    the jobs run at nice 10 and, in CI, beside the suite's other tests, which may take most of the CPU."""
    deadline, most_running = time.time() + deadline_s, 0
    while True:
        tasks = array_tasks(job_id)
        most_running = max(most_running, sum(state == "RUNNING" for _, state in tasks.values()))
        if len(tasks) == expected_tasks and all(
            state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
            for _, state in tasks.values()
        ):
            return most_running
        assert time.time() < deadline, f"array job {job_id} not done after {deadline_s} s: {tasks}"
        time.sleep(0.5)


def job_completions():
    """sacct -c (the job completion log; there is no slurmdbd): {job id: {State, ExitCode, Start, End}}."""
    out = subprocess.run(
        ["sacct", "-c", "-n", "-P", "-o", "JobID,State,ExitCode,Start,End"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {row[0]: dict(zip(("State", "ExitCode", "Start", "End"), row[1:])) for row in rows}


@pytest.mark.slurm
def test_a_sweep_on_a_real_slurm(slurm_cluster, tmp_path):
    """sqil and dqn x seeds 1-2 on CartPole-v1 as a 4-task array throttled to one task at a time (--workers 1), from a
    shell without the virtualenv: the tasks get it from --setup. sqil seed 2 fails (a corrupt checkpoint that its task
    tries to resume from); the same command again submits that run alone; then report over the four runs."""
    env = submit_env()
    exp = {algo: f"{algo}@{args_id(*TINY_BOTH)}" for algo in ("sqil", "dqn")}
    corrupt = tmp_path / "checkpoints" / f"CartPole-v1__{exp['sqil']}__2.pt"  # sqil has --resume, dqn has not
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not a checkpoint")
    logs = tmp_path / "benchmark" / "logs"
    sweep = [
        "--algos",
        "sqil dqn",
        "--env-ids",
        "CartPole-v1",
        "--seeds",
        2,
        "--workers",
        1,
        "--workdir",
        tmp_path,
        "--slurm",
        "--setup",
        setup_line(),
        "--",
        *TINY_BOTH,
    ]
    jobs = []
    try:
        result = benchmark(*sweep, cwd=tmp_path, env=env)
        jobs.append(submitted_job(result))
        assert "4 combinations: 4 to run, 0 already finished" in result.stderr
        job = jobs[0]
        details = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        throttles = re.findall(r"^JobId=\d+ ArrayJobId=\d+ ArrayTaskId=\S+ ArrayTaskThrottle=(\d+)", details, re.M)
        assert throttles and set(throttles) == {"1"}, details  # --array=0-3%1: one task at a time
        most_running = wait_for_array(job, 4)
        tasks = array_tasks(job)
        # tasks in combination order: sqil seeds 1, 2, then dqn seeds 1, 2
        assert {task: state for task, (_, state) in tasks.items()} == {
            0: "COMPLETED",
            1: "FAILED",
            2: "COMPLETED",
            3: "COMPLETED",
        }
        assert most_running <= 1  # (the spans below: one after the other)
        completions = job_completions()
        records = {task: completions[raw] for task, (raw, _) in tasks.items()}
        assert [records[task]["ExitCode"] for task in range(4)] == ["0:0", "1:0", "0:0", "0:0"], records
        assert records[1]["State"] == "FAILED" and all(records[task]["State"] == "COMPLETED" for task in (0, 2, 3))
        spans = sorted((records[task]["Start"], records[task]["End"]) for task in range(4))
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans  # one at a time

        # every task ran the venv's python3, found after --setup, not the python3 of the submitting shell
        venv_python = str(Path(sys.prefix) / "bin" / "python3") if sys.prefix != sys.base_prefix else None
        for task in range(4):
            out = (logs / f"slurm-{job}_{task}.out").read_text()
            (python,) = re.findall(r"^python: (\S+) \(Python 3", out, re.M)
            assert python != shutil.which("python3", path=env["PATH"]), out
            assert venv_python is None or python == venv_python, out
        # the failure, reported with its log: Slurm's output names the log and shows its end, the error in it
        failed_log = logs / f"{exp['sqil']}__CartPole-v1__2.log"
        out = (logs / f"slurm-{job}_1.out").read_text()
        assert f"sqil CartPole-v1 seed 2 exited with status 1; log: {failed_log}" in out, out
        error = [line for line in failed_log.read_text().splitlines() if "Error" in line or "error: " in line][-1]
        assert error in out and "command: " in out and "--resume" in out, out

        finished = {}
        for algo in ("sqil", "dqn"):
            for seed in (1, 2):
                runs = finished_runs(tmp_path, f"CartPole-v1__{exp[algo]}__{seed}")
                if (algo, seed) == ("sqil", 2):
                    assert runs == []
                    continue
                (run_dir,) = runs
                summary = read_summary(run_dir)
                assert summary["args"]["exp_name"] == exp[algo] and summary["args"]["seed"] == seed
                assert summary["args"]["total_timesteps"] == 300 and summary["args"]["hidden_size"] == 32
                assert math.isfinite(summary["final_return"])
                assert [row["global_step"] for row in read_eval_csv(run_dir)] == [0, 150, 300]
                finished[algo, seed] = (run_dir, (run_dir / "summary.json").stat().st_mtime_ns)

        # the cause fixed, the same command again: the three finished runs skipped, only the failed one submitted
        corrupt.unlink()
        result = benchmark(*sweep, cwd=tmp_path, env=env)
        jobs.append(submitted_job(result))
        assert "4 combinations: 1 to run, 3 already finished" in result.stderr
        wait_for_array(jobs[1], 1)
        ((raw, state),) = array_tasks(jobs[1]).values()
        assert state == "COMPLETED" and job_completions()[raw]["ExitCode"] == "0:0"
        assert "sqil CartPole-v1 seed 2 exited with status 0" in (logs / f"slurm-{jobs[1]}_0.out").read_text()
        (run_dir,) = finished_runs(tmp_path, f"CartPole-v1__{exp['sqil']}__2")
        assert read_summary(run_dir)["args"]["resume"] is False  # started anew: no checkpoint to resume from
        for (algo, seed), (run_dir, mtime) in finished.items():
            assert finished_runs(tmp_path, f"CartPole-v1__{exp[algo]}__{seed}") == [run_dir]
            assert (run_dir / "summary.json").stat().st_mtime_ns == mtime  # untouched

        # everything finished: nothing to submit
        before = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%A"], capture_output=True, text=True, timeout=30).stdout
        result = benchmark(*sweep, cwd=tmp_path, env=env)
        assert result.returncode == 0 and "nothing to submit: all 4 combinations have finished runs" in result.stderr
        after = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%A"], capture_output=True, text=True, timeout=30).stdout
        assert sorted(after.split()) == sorted(before.split())

        # report over the four runs (run in the test's own Python: the report needs matplotlib)
        report = benchmark("report", "--workdir", tmp_path, cwd=tmp_path, env={**env, "PYTHON": sys.executable})
        assert report.returncode == 0, report.stderr
        text = (tmp_path / "runs" / "report" / "results.md").read_text()
        for algo in ("sqil", "dqn"):
            summaries = [read_summary(finished_runs(tmp_path, f"CartPole-v1__{exp[algo]}__{seed}")[0]) for seed in (1, 2)]
            scores = np.array([s["final_normalized_score"] for s in summaries])
            returns = np.array([s["final_return"] for s in summaries])
            row = f"| {algo} | CartPole-v1 | 1, 2 | 300 | {scores.mean():.3f} ± {scores.std(ddof=1):.3f} (n=2) | "
            assert row in text, text
            (line,) = [line for line in text.splitlines() if line.startswith(row)]
            assert f"| {returns.mean():.1f} ± {returns.std(ddof=1):.1f} |" in line, line
    finally:
        if jobs:  # a failed assertion must not leave tasks running on a cluster that stays up
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)


# sac on Pendulum-v1 with tiny networks and batches: ~150 steps/s on one loaded CPU at nice 10 (seconds per part); it
# checkpoints when stopped, and a resumed run refills its replay buffer with 100 steps instead of 50,000
SAC_TINY = [
    "--total-timesteps",
    "2000",
    "--learning-starts",
    "100",
    "--eval-frequency",
    "500",
    "--eval-episodes",
    "2",
    "--batch-size",
    "32",
    "--hidden-size",
    "32",
    "--refill-steps",
    "100",
]


@pytest.mark.slurm
def test_a_cancelled_task_resumes_from_its_checkpoint_when_resubmitted(slurm_cluster, tmp_path):
    """A sac run killed mid-run (`scancel` of its array task: Slurm sends SIGTERM, then SIGKILL after KillWait) is left
    CANCELLED with the checkpoint of the step it stopped at, saved on the SIGTERM, since the task waits for its run to
    save it; the same command again submits it with --resume, and it finishes in the same run folder from that step,
    its log appended, its checkpoint deleted."""
    env = submit_env()
    exp = f"sac@{args_id(*SAC_TINY)}"
    checkpoint = tmp_path / "checkpoints" / f"Pendulum-v1__{exp}__1.pt"
    logs = tmp_path / "benchmark" / "logs"
    log = logs / f"{exp}__Pendulum-v1__1.log"
    sweep = [
        "--algos",
        "sac",
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        1,
        "--workdir",
        tmp_path,
        "--slurm",
        "--setup",
        setup_line(),
        "--",
        *SAC_TINY,
    ]
    jobs = []
    try:
        result = benchmark(*sweep, cwd=tmp_path, env=env)
        jobs.append(submitted_job(result))
        job = jobs[0]
        assert "1 combinations: 1 to run, 0 already finished" in result.stderr
        # wait for the run's evaluation at step 500 (it learns from step 100 on), then cancel its task while it runs
        deadline = time.time() + 300
        while not (evals := list(tmp_path.glob("runs/Pendulum-v1__*/eval.csv"))) or len(read_eval_csv(evals[0].parent)) < 2:
            ((_, state),) = array_tasks(job).values()
            assert state in ("PENDING", "CONFIGURING", "RUNNING") and time.time() < deadline, (
                f"task {state}, no evaluation at step 500 yet:\n{log.read_text()[-3000:] if log.exists() else 'no log'}"
            )
            time.sleep(0.2)
        assert not checkpoint.exists()  # saved every --checkpoint-minutes (30) and when stopped: not yet
        cancel = subprocess.run(["scancel", f"{job}_0"], capture_output=True, text=True, timeout=30)
        assert cancel.returncode == 0, cancel.stderr
        wait_for_array(job, 1, deadline_s=120)
        ((raw, state),) = array_tasks(job).values()
        assert state == "CANCELLED" and job_completions()[raw]["State"] == "CANCELLED", (state, job_completions().get(raw))
        (run_dir,) = (tmp_path / "runs").glob("Pendulum-v1__*")  # runs/sweeps/ holds the sweep's record
        assert not (run_dir / "summary.json").exists()  # stopped mid-run: not finished, so not skipped below
        # the run got the SIGTERM and checkpointed at the step it stopped at; the task waited for it before it ended
        # (so nothing of the run outlives its job: CANCELLED means the checkpoint is written)
        assert checkpoint.exists()
        first_part = log.read_text()
        stopping = rf"stopped at step (\d+): continue from checkpoints/{re.escape(checkpoint.name)} with --resume"
        stops = [int(step) for step in re.findall(stopping, first_part)]
        assert len(stops) == 1 and 500 <= stops[0] < 2000, first_part[-3000:]
        stopped = stops[0]
        out = (logs / f"slurm-{job}_0.out").read_text()
        assert "CANCELLED" in out and f"sac Pendulum-v1 seed 1 exited with status 143; log: {log}" in out, out
        evaluated = [row for row in read_eval_csv(run_dir) if row["global_step"] <= stopped]
        assert [row["global_step"] for row in evaluated][:2] == [0, 500]

        # the same command again: the unfinished combination is submitted and its task resumes from the checkpoint
        result = benchmark(*sweep, cwd=tmp_path, env=env)
        jobs.append(submitted_job(result))
        assert "1 combinations: 1 to run, 0 already finished" in result.stderr
        wait_for_array(jobs[1], 1, deadline_s=300)
        ((raw, state),) = array_tasks(jobs[1]).values()
        text = log.read_text()
        assert state == "COMPLETED" and job_completions()[raw]["ExitCode"] == "0:0", (state, text[-3000:])
        out = (logs / f"slurm-{jobs[1]}_0.out").read_text()
        assert re.search(r"^command: .*/cleanil/sac\.py .* --resume$", out, re.M), out
        assert finished_runs(tmp_path, f"Pendulum-v1__{exp}__1") == [run_dir]  # the same run folder, finished now
        assert list((tmp_path / "runs").glob("Pendulum-v1__*")) == [run_dir]  # and no second one
        assert text.startswith(first_part)  # the log appended to, not truncated: both parts of the run
        # the resumed part refills the replay buffer, then goes on under the interrupted run's name from where it stopped
        resumed = text[len(first_part) :]
        assert "refilling the replay buffer" in resumed and f"| {stopped}/2000 [" in resumed, resumed[-3000:]
        assert re.search(rf"^{re.escape(run_dir.name)}: \S+, (fp32|bf16-autocast)$", resumed, re.M), resumed[-3000:]
        assert text.count("final return") == 1 and not checkpoint.exists()  # finished: its checkpoint deleted
        rows = read_eval_csv(run_dir)
        steps = [row["global_step"] for row in rows]
        assert steps[0] == 0 and steps[-1] == 2000 and (np.diff(steps) > 0).all(), steps
        assert rows[: len(evaluated)] == evaluated and steps[len(evaluated)] > stopped, steps  # kept, then continued
        summary = read_summary(run_dir)
        assert summary["args"]["resume"] is True and summary["args"]["exp_name"] == exp
        assert summary["refill_env_steps"] == 100  # one resume: the buffer refilled once
        assert math.isfinite(summary["final_return"])
    finally:
        if jobs:  # a failed assertion must not leave tasks running on a cluster that stays up
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)
