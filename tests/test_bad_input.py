"""Every script through the bad inputs of issue 16, one process per case: a non-zero exit, no traceback, one line
that names the problem, and no run folder (nor a wandb run) left behind. Then what an interrupted or expert-less run
leaves: Ctrl-C ends a real run with one line naming its folder and exit status 130, eval.csv whole; summary.json is
strict JSON. And the shared blocks stay identical across the scripts (docs/DESIGN.md)."""

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from conftest import EXPERTS, SCRIPTS, assert_clean_error, read_eval_csv, run_script

ALL = [
    "airl",
    "bc",
    "bco",
    "cfil",
    "dagger",
    "dqn",
    "gaifo",
    "gail",
    "ilpo",
    "iq_learn",
    "nail",
    "pmi_il",
    "reinforce",
    "sac",
    "sqil",
]
CONTINUOUS_ONLY = {"cfil", "nail", "sac"}
DISCRETE_ONLY = {"dqn", "ilpo"}
EXPERT_OPTIONAL = {"dqn", "reinforce", "sac"}  # trainers: expert.json only adds the normalized score
BATCH_FLAG = {
    "bc": "--batch-size",
    "bco": "--batch-size",
    "cfil": "--batch-size",
    "dagger": "--batch-size",
    "dqn": "--batch-size",
    "nail": "--batch-size",
    "sac": "--batch-size",
    "sqil": "--batch-size",
    "ilpo": "--latent-batch-size",
    "iq_learn": "--batch-size",
    "airl": "--num-envs",
    "gail": "--num-envs",
    "gaifo": "--num-envs",
    "pmi_il": "--num-envs",
    "reinforce": "--num-episodes",
}


def env_of(script):
    return "Pendulum-v1" if script in CONTINUOUS_ONLY else "CartPole-v1"


def zero_inside(src, dst):
    """A copy of the npz at src with 4 KiB zeroed inside a deflate stream (the length unchanged, unlike a truncated
    file), at the first offset where numpy's read fails in zlib itself rather than on the zip's CRC check."""
    data = src.read_bytes()
    for offset in range(200, len(data) - 4096, 997):
        dst.write_bytes(data[:offset] + bytes(4096) + data[offset + 4096 :])
        try:
            with np.load(dst) as npz:
                for key in npz.files:
                    npz[key]
        except zlib.error:
            return
        except Exception:
            continue
    raise AssertionError(f"no offset of {src} gives a zlib.error")


def bad_input_cases():
    cases = []
    for script in ALL:
        env = ["--env-id", env_of(script)]
        for budget in ("0", "-5"):
            # dagger's budget is a number of rounds, or a multiple of a round's steps
            fragment = (
                "is not a positive multiple of --steps-per-round"
                if script == "dagger"
                else "--total-timesteps must be positive"
            )
            cases.append(
                pytest.param(script, [*env, "--total-timesteps", budget], fragment, {}, id=f"{script}-budget{budget}")
            )
        if script == "dagger":
            cases.append(
                pytest.param(script, [*env, "--rounds", "0"], "--rounds must be positive", {}, id=f"{script}-zero-rounds")
            )
        cases.append(
            pytest.param(
                script,
                [*env, "--eval-frequency", "0"],
                "--eval-frequency must be positive",
                {},
                id=f"{script}-zero-eval-frequency",
            )
        )
        cases.append(
            pytest.param(
                script,
                [*env, "--eval-episodes", "0"],
                "--eval-episodes must be positive",
                {},
                id=f"{script}-zero-eval-episodes",
            )
        )
        cases.append(
            pytest.param(
                script,
                [*env, BATCH_FLAG[script], "0"],
                f"{BATCH_FLAG[script]} must be positive",
                {},
                id=f"{script}-zero-batch",
            )
        )
        cases.append(
            pytest.param(
                script, ["--env-id", "NoSuchEnv-v0", "--track"], "unknown environment id", {}, id=f"{script}-unknown-env"
            )
        )
        # a headless machine without MUJOCO_GL: GLFW finds no display
        cases.append(
            pytest.param(
                script,
                ["--env-id", "Hopper-v4", "--capture-video", "--track"],
                "--capture-video cannot render",
                {"MUJOCO_GL": "glfw", "DISPLAY": ":99999", "WAYLAND_DISPLAY": ""},
                id=f"{script}-video-without-gl",
            )
        )
        if script in CONTINUOUS_ONLY:
            cases.append(
                pytest.param(script, ["--env-id", "CartPole-v1", "--track"], "continuous", {}, id=f"{script}-discrete-env")
            )
        if script in DISCRETE_ONLY:
            cases.append(
                pytest.param(script, ["--env-id", "Pendulum-v1", "--track"], "discrete", {}, id=f"{script}-continuous-env")
            )
    for script in ("airl", "gail", "gaifo", "pmi_il"):
        cases.append(
            pytest.param(
                script,
                ["--env-id", "CartPole-v1", "--total-timesteps", "1000"],
                "--total-timesteps 1000 is less than one iteration of --num-envs 8 x --num-steps",
                {},
                id=f"{script}-budget-below-one-iteration",
            )
        )
    return cases


def assert_one_error_line(result, *fragments):
    assert_clean_error(result, *fragments)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(fragment in errors[0] for fragment in fragments), result.stderr


def assert_nothing_created(cwd):
    assert not (cwd / "runs").exists() or not list((cwd / "runs").iterdir()), list((cwd / "runs").iterdir())
    assert not (cwd / "wandb").exists(), "wandb.init ran before the input was checked"
    assert not (cwd / "checkpoints").exists()


@pytest.mark.parametrize("script, flags, fragment, env_vars", bad_input_cases())
def test_bad_input_is_one_clean_line_and_leaves_no_run(script, flags, fragment, env_vars, tmp_path):
    result = run_script(f"{script}.py", *flags, cwd=tmp_path, check=False, timeout=120, env_vars=env_vars)
    assert_one_error_line(result, fragment)
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize("script", sorted(set(ALL) - EXPERT_OPTIONAL))
def test_missing_expert_folder_names_a_command_that_creates_it(script, tmp_path):
    folder = tmp_path / "some" / "missing" / "folder"
    result = run_script(
        f"{script}.py", "--env-id", env_of(script), "--expert-path", folder, cwd=tmp_path, check=False, timeout=120
    )
    # a folder of one's own is built by cleanil/demos.py from one's demonstrations, not by a trainer (issue 20)
    assert_one_error_line(
        result,
        f"no expert at {folder / 'expert.json'}",
        f"cleanil ships one at experts/{env_of(script)} (drop --expert-path to use it)",
        f"`python cleanil/demos.py --env-id {env_of(script)} --expert-path {folder} "
        f"--from-<minari|d4rl|sb3|npz|policy> <source>`",
        "observation_shape and action_shape",
    )
    assert "--save-expert" not in result.stderr, result.stderr
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize(
    "script", ["airl", "bc", "bco", "cfil", "dagger", "gaifo", "gail", "ilpo", "iq_learn", "nail", "pmi_il", "sqil"]
)
def test_corrupt_demos_name_the_file_and_the_command(script, tmp_path):
    env_id = env_of(script)
    folder = tmp_path / "expert"
    shutil.copytree(EXPERTS / env_id, folder)
    zero_inside(EXPERTS / env_id / "demos.npz", folder / "demos.npz")
    result = run_script(f"{script}.py", "--env-id", env_id, "--expert-path", folder, cwd=tmp_path, check=False, timeout=120)
    assert_one_error_line(
        result,
        f"{folder / 'demos.npz'} is corrupt",
        f"demos.py --env-id {env_id} --expert-path {folder} --from-<minari|d4rl|sb3|npz|policy> <source> --overwrite`",
    )
    assert_nothing_created(tmp_path)


def test_expert_command_needs_expert_path_only_off_the_default_folder(tmp_path):
    import bc

    assert bc.expert_command("CartPole-v1") == "python cleanil/dqn.py --env-id CartPole-v1 --save-expert"
    assert bc.expert_command("CartPole-v1", EXPERTS / "CartPole-v1") == bc.expert_command("CartPole-v1")
    assert (
        bc.expert_command("Pendulum-v1", "my demos")
        == "python cleanil/demos.py --env-id Pendulum-v1 --expert-path 'my demos' --from-<minari|d4rl|sb3|npz|policy> <source>"
    )
    assert bc.demos_command("Pendulum-v1", EXPERTS / "Pendulum-v1") == "python cleanil/demos.py --env-id Pendulum-v1"
    hint = bc.missing_expert_hint("Hopper-v4", tmp_path / "nowhere")
    assert "drop --expert-path" in hint and f"demos.py --env-id Hopper-v4 --expert-path {tmp_path / 'nowhere'} --from-" in hint
    assert "sac.py" not in hint and "demos.py" in bc.missing_expert_hint("Swimmer-v4", tmp_path / "nowhere")
    assert "git checkout -- experts/Hopper-v4" in bc.missing_expert_hint("Hopper-v4")  # sac.py's hint, unchanged


def strict_json(text):
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def test_summary_without_an_expert_is_strict_json(tmp_path):
    demos_only = tmp_path / "demos-only"
    demos_only.mkdir()
    shutil.copy(EXPERTS / "CartPole-v1" / "demos.npz", demos_only)
    result = run_script(
        "reinforce.py",
        "--env-id",
        "CartPole-v1",
        "--expert-path",
        demos_only,
        "--total-timesteps",
        100,
        "--eval-frequency",
        50,
        "--eval-episodes",
        1,
        "--num-episodes",
        2,
        cwd=tmp_path,
    )
    (run_dir,) = (tmp_path / "runs").iterdir()
    # the device, its name and the threads, said at the start (before the progress bar) as well as recorded
    start = result.stderr.index(f"{run_dir.name}: cpu (")
    assert "1 thread(s), fp32" in result.stderr[start:].splitlines()[0] and start < result.stderr.index("it/s]"), result.stderr
    summary = strict_json((run_dir / "summary.json").read_text())
    assert summary["final_normalized_score"] is None and summary["best_normalized_score"] is None, summary
    assert np.isfinite(summary["final_return"]) and summary["mean_sps"] > 0, summary
    assert summary["device"] == "cpu" and summary["threads"] == 1 and summary["precision"] == "fp32", summary
    assert summary["device_name"], summary
    rows = read_eval_csv(run_dir)
    assert all(np.isnan(row["normalized_score"]) for row in rows)  # eval.csv keeps nan: csv has no null


@pytest.mark.parametrize("script", ["airl", "gail", "gaifo", "pmi_il"])
def test_on_policy_budget_is_never_exceeded_and_the_bar_ends_full(script, tmp_path):
    """--total-timesteps 2048 = one iteration of 8 x 256: one iteration runs (it was two, 3,947 transitions), and the
    progress bar ends at 100% of the steps run rather than at a total it never reached."""
    result = run_script(
        f"{script}.py",
        "--env-id",
        "CartPole-v1",
        "--total-timesteps",
        2048,
        "--eval-frequency",
        1024,
        "--eval-episodes",
        1,
        cwd=tmp_path,
    )
    (run_dir,) = (tmp_path / "runs").iterdir()
    steps = [row["global_step"] for row in read_eval_csv(run_dir)]
    # 8 envs x 256 steps less one autoreset step per finished CartPole episode (>= 8 steps each)
    assert steps[0] == 0 and 2048 - 2048 // 8 <= steps[-1] <= 2048 and len(steps) == 2, steps
    bars = [line for line in result.stderr.replace("\r", "\n").splitlines() if "it/s" in line]
    assert bars and "100%|" in bars[-1] and f"{int(steps[-1])}/{int(steps[-1])} " in bars[-1], bars[-3:]


@pytest.mark.parametrize("script", ALL)
def test_every_script_says_its_device_and_threads_before_training(script):
    # the formatter may wrap the call and split its f-string: read the source with adjacent literals joined
    source = re.sub(r'"\s*f"', "", re.sub(r"\(\s+", "(", (SCRIPTS / f"{script}.py").read_text()))
    said = source.index(
        "print(f\"{run_name}: {hardware['device']} ({hardware['device_name']}), {hardware['threads']} thread(s)"
    )
    assert said < source.index("    progress = tqdm(") and "mean_sps, hardware" in source.replace("{**hardware", "hardware")


def start_and_interrupt(command, cwd, ready):
    """Popen command in cwd (one thread, wandb offline), wait until ready(cwd), then SIGINT; returns (code, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    process = subprocess.Popen(
        [sys.executable, *map(str, command)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 180
        while not ready(cwd):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the run never became ready"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def evaluations_written(cwd, count=2):
    paths = list((cwd / "runs").glob("*/eval.csv")) if (cwd / "runs").exists() else []
    return bool(paths) and len(paths[0].read_text().splitlines()) > count


@pytest.mark.parametrize(
    "script, flags",
    [
        ("bc", ["--env-id", "CartPole-v1", "--total-timesteps", 10_000_000, "--eval-frequency", 100, "--eval-episodes", 1]),
        (
            "gail",
            [
                "--env-id",
                "CartPole-v1",
                "--total-timesteps",
                10_000_000,
                "--num-envs",
                2,
                "--num-steps",
                64,
                "--eval-frequency",
                128,
                "--eval-episodes",
                1,
            ],
        ),
    ],
    ids=["bc", "gail"],
)
def test_sigint_ends_a_run_with_one_line_and_eval_csv_whole(script, flags, tmp_path):
    code, stderr = start_and_interrupt([SCRIPTS / f"{script}.py", *flags], tmp_path, evaluations_written)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert code == 128 + signal.SIGINT, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if "stopped by SIGINT" in line]
    assert str(run_dir.relative_to(tmp_path)) in line and "--resume" in line, line
    rows = read_eval_csv(run_dir)
    header = (run_dir / "eval.csv").read_text().splitlines()[0].split(",")
    assert len(rows) >= 2 and all(len(row) == len(header) and np.isfinite(list(row.values())).all() for row in rows), rows
    assert [row["global_step"] for row in rows] == sorted({row["global_step"] for row in rows}), rows
    if (run_dir / "summary.json").exists():
        strict_json((run_dir / "summary.json").read_text())


def test_sigint_checkpoints_a_dqn_run_and_names_resume(tmp_path):
    checkpoint_dir = tmp_path / "checkpoint"
    command = [
        SCRIPTS / "dqn.py",
        "--env-id",
        "CartPole-v1",
        "--total-timesteps",
        10_000_000,
        "--eval-frequency",
        200,
        "--eval-episodes",
        1,
        "--learning-starts",
        100,
        "--checkpoint-frequency",
        0,
        "--checkpoint-dir",
        checkpoint_dir,
    ]
    code, stderr = start_and_interrupt(command, tmp_path, evaluations_written)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert code == 128 + signal.SIGINT and "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if "stopped by SIGINT" in line]
    assert str(run_dir.relative_to(tmp_path)) in line and str(checkpoint_dir) in line and "--resume" in line, line
    assert (checkpoint_dir / "checkpoint.pt").exists()
    assert len(read_eval_csv(run_dir)) >= 2


def top_level_sources(path):
    text = path.read_text()
    sources = {}
    for node in ast.parse(text).body:
        name = getattr(node, "name", None) or (isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None))
        if name:
            sources[name] = ast.get_source_segment(text, node)
    return sources


@pytest.mark.parametrize(
    "name",
    ["load_expert_info", "SHIPPED_EXPERTS", "missing_expert_hint", "hardware_info", "write_summary", "exit_on_stop_signals"],
)
def test_the_blocks_of_this_issue_are_in_every_script_and_identical(name):
    """tests/test_shared_blocks.py keeps copies identical where they exist; these must also exist where they apply."""
    copies = {script: top_level_sources(SCRIPTS / f"{script}.py").get(name) for script in ALL}
    holders = {script: source for script, source in copies.items() if source is not None}
    assert len(set(holders.values())) == 1, {script: source[:200] for script, source in holders.items()}
    # the scripts that cannot resume stop at once; the others finish the step and checkpoint on the signal
    expected = set(ALL) - {"cfil", "dqn", "iq_learn", "nail", "sac", "sqil"} if name == "exit_on_stop_signals" else set(ALL)
    assert set(holders) == expected, set(holders) ^ expected
