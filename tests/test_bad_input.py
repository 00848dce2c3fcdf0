"""Every script through the bad inputs of issue 16, one process per case: exit status 1, no traceback, one `error:` line
that names the problem, and no run folder (nor a wandb run, nor a checkpoint) left behind. A missing or malformed expert
folder is one line that names `python cleanil/demos.py --check <folder>`, which says what is wrong with it
(tests/test_demos.py turns each corruption into its --check line). Then what a run without an expert or an interrupted
resumable run leaves: strict JSON, the device line before the progress bar, a checkpoint that --resume continues."""

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

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
LOADS_DEMOS = sorted(set(ALL) - EXPERT_OPTIONAL)
RESUMABLE = ["cfil", "iq_learn", "nail", "sac", "sqil"]  # the only scripts with a checkpoint (DESIGN.md)
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


def bad_input_cases():
    cases = []

    def case(script, flags, fragment, name, env_vars=None):
        cases.append(pytest.param(script, flags, fragment, env_vars or {}, id=f"{script}-{name}"))

    for script in ALL:
        env = ["--env-id", env_of(script)]
        for budget in ("0", "-5"):
            # dagger's budget is a number of rounds, or a multiple of a round's steps
            fragment = (
                "is not a positive multiple of --steps-per-round"
                if script == "dagger"
                else "--total-timesteps must be positive"
            )
            case(script, [*env, "--total-timesteps", budget], fragment, f"budget{budget}")
        if script == "dagger":
            case(script, [*env, "--rounds", "0"], "--rounds must be positive", "zero-rounds")
        case(script, [*env, "--eval-frequency", "0"], "--eval-frequency must be positive", "zero-eval-frequency")
        case(script, [*env, "--eval-episodes", "0"], "--eval-episodes must be positive", "zero-eval-episodes")
        case(script, [*env, BATCH_FLAG[script], "0"], f"{BATCH_FLAG[script]} must be positive", "zero-batch")
        case(script, ["--env-id", "NoSuchEnv-v0", "--track"], "unknown environment id", "unknown-env")
        if script in CONTINUOUS_ONLY:
            case(script, ["--env-id", "CartPole-v1", "--track"], "continuous", "discrete-env")
        if script in DISCRETE_ONLY:
            case(script, ["--env-id", "Pendulum-v1", "--track"], "discrete", "continuous-env")
    for script in ("airl", "gail", "gaifo", "pmi_il"):
        fragment = "--total-timesteps 1000 is less than one iteration of --num-envs 8 x --num-steps"
        case(script, ["--env-id", "CartPole-v1", "--total-timesteps", "1000"], fragment, "budget-below-one-iteration")
    return cases


def assert_one_error_line(result, *fragments):
    """Exit status 1, no traceback, and exactly one `error:` line on stderr, which holds every fragment."""
    assert_clean_error(result, *fragments)
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
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


# ---- a missing or malformed expert folder: one line naming `demos.py --check`, and no run ----


def check_command(folder):
    return f"`python cleanil/demos.py --check {folder}` says what to fix."


@pytest.mark.parametrize("script", LOADS_DEMOS)
def test_missing_expert_folder_names_demos_check(script, tmp_path):
    folder = tmp_path / "some" / "missing" / "folder"
    result = run_script(
        f"{script}.py", "--env-id", env_of(script), "--expert-path", folder, cwd=tmp_path, check=False, timeout=120
    )
    assert_one_error_line(result, f"error: {folder} is not a usable expert folder: ", check_command(folder))
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize("script", LOADS_DEMOS)
def test_corrupt_demos_name_demos_check(script, tmp_path):
    env_id = env_of(script)
    folder = tmp_path / "expert"
    shutil.copytree(EXPERTS / env_id, folder)
    (folder / "demos.npz").write_bytes((EXPERTS / env_id / "demos.npz").read_bytes()[:5000])  # a zip cut short
    result = run_script(f"{script}.py", "--env-id", env_id, "--expert-path", folder, cwd=tmp_path, check=False, timeout=120)
    assert_one_error_line(result, f"error: {folder} is not a usable expert folder: ", check_command(folder))
    assert_nothing_created(tmp_path)


def edit_json(folder, **changes):
    info = json.loads((folder / "expert.json").read_text())
    info.update(changes)
    (folder / "expert.json").write_text(json.dumps({key: value for key, value in info.items() if value is not None}))


def edit_demos(folder, **changes):
    with np.load(folder / "demos.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays.update(changes)
    np.savez_compressed(folder / "demos.npz", **{key: value for key, value in arrays.items() if value is not None})


def with_actions(folder, value):
    with np.load(folder / "demos.npz") as npz:
        actions = npz["actions"].copy()
    actions[3] = value
    edit_demos(folder, actions=actions)


MALFORMED = {
    "expert-json-not-json": (lambda folder: (folder / "expert.json").write_text("{"), [], "Expecting property name"),
    "no-random-return": (lambda folder: edit_json(folder, random_return_mean=None), [], "'random_return_mean'"),
    "nan-return": (
        lambda folder: edit_json(folder, expert_return_mean=float("nan")),
        [],
        "its expert_return_mean and random_return_mean define no normalized score",
    ),
    "another-env": (
        lambda folder: edit_json(folder, env_id="Acrobot-v1"),
        [],
        "it was recorded on Acrobot-v1, not CartPole-v1 (--any-env uses it anyway)",
    ),
    "missing-array": (lambda folder: edit_demos(folder, actions=None), [], "'actions is not a file in the archive'"),
    "action-out-of-range": (lambda folder: with_actions(folder, 5), [], "its actions leave the action space Discrete(2)"),
    "too-many-trajectories": (
        lambda folder: None,
        ["--num-expert-trajectories", "26"],
        "--num-expert-trajectories 26 is not between 1 and its 25 episodes",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_the_shared_load_expert_turns_a_malformed_folder_into_one_line(case, tmp_path):
    """The block is the same in every script (tests/test_shared_blocks.py): its cheap checks, through bc.py."""
    corrupt, flags, fragment = MALFORMED[case]
    folder = tmp_path / "expert"
    shutil.copytree(EXPERTS / "CartPole-v1", folder)
    corrupt(folder)
    result = run_script(
        "bc.py", "--env-id", "CartPole-v1", "--expert-path", folder, *flags, cwd=tmp_path, check=False, timeout=120
    )
    assert_one_error_line(result, f"error: {folder} is not a usable expert folder: ", fragment, check_command(folder))
    assert_nothing_created(tmp_path)


# ---- the checkpoint of the resumable scripts: a fresh run never overwrites one, --resume needs one ----


def checkpoint_flags(script, tmp_path):
    flags = ["--env-id", env_of(script), "--exp-name", "x", "--checkpoint-dir", tmp_path / "ckpt"]
    return flags, tmp_path / "ckpt" / f"{env_of(script)}__x__1.pt"


@pytest.mark.parametrize("script", RESUMABLE)
def test_a_fresh_run_refuses_to_overwrite_a_checkpoint(script, tmp_path):
    flags, checkpoint = checkpoint_flags(script, tmp_path)
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"an interrupted run's")
    result = run_script(f"{script}.py", *flags, cwd=tmp_path, check=False, timeout=120)
    assert_one_error_line(
        result, f"error: {checkpoint} holds an interrupted run's checkpoint; continue it with --resume, or delete it"
    )
    assert checkpoint.read_bytes() == b"an interrupted run's"
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize("script", RESUMABLE)
def test_resume_without_a_checkpoint_is_one_line(script, tmp_path):
    flags, checkpoint = checkpoint_flags(script, tmp_path)
    result = run_script(f"{script}.py", *flags, "--resume", cwd=tmp_path, check=False, timeout=120)
    assert_one_error_line(result, str(checkpoint))
    assert_nothing_created(tmp_path)


# ---- what a run leaves ----


def strict_json(text):
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def test_summary_without_an_expert_is_strict_json(tmp_path):
    result = run_script(
        "reinforce.py",
        "--env-id",
        "CartPole-v1",
        "--expert-path",
        tmp_path / "no-expert",
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
    # the device and precision, said at the start (before the progress bar) as well as recorded
    assert f"{run_dir.name}: cpu, fp32\n" in result.stderr, result.stderr
    assert result.stderr.index(f"{run_dir.name}: cpu, fp32") < result.stderr.index("it/s]"), result.stderr
    summary = strict_json((run_dir / "summary.json").read_text())
    assert summary["final_normalized_score"] is None and summary["best_normalized_score"] is None, summary
    assert np.isfinite(summary["final_return"]) and summary["mean_sps"] > 0, summary
    assert summary["device"] == "cpu" and summary["precision"] == "fp32", summary
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
def test_every_script_says_its_device_before_training_and_records_it(script):
    # the formatter may wrap a call and split its f-string: read the source without whitespace and adjacent literals joined
    source = re.sub(r"\s+", "", re.sub(r'"\s*f"', "", (SCRIPTS / f"{script}.py").read_text()))
    main = source.index('if__name__=="__main__":')
    said = source.index('print(f"{run_name}:{device},{precision}",file=sys.stderr)', main)
    assert said < source.index("tqdm(total=args.total_timesteps", main), "the device line comes after the training bar starts"
    assert re.search(r"write_summary\(run_dir,args,eval_rows,\w+,\w+,device,precision", source[main:]), "no device in summary"


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


def test_sigint_checkpoints_a_sac_run_and_eval_csv_stays_whole(tmp_path):
    flags, checkpoint = checkpoint_flags("sac", tmp_path)
    command = [
        SCRIPTS / "sac.py",
        *flags,
        "--total-timesteps",
        10_000_000,
        "--learning-starts",
        100,
        "--eval-frequency",
        200,
        "--eval-episodes",
        1,
    ]
    code, stderr = start_and_interrupt(command, tmp_path, evaluations_written)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert code == 128 + signal.SIGINT and "Traceback" not in stderr, stderr[-3000:]
    assert checkpoint.exists(), stderr[-3000:]
    rows = read_eval_csv(run_dir)
    header = (run_dir / "eval.csv").read_text().splitlines()[0].split(",")
    assert len(rows) >= 2 and all(len(row) == len(header) for row in rows), rows
    assert [row["global_step"] for row in rows] == sorted({row["global_step"] for row in rows}), rows


def top_level_names(path):
    return {
        node.name if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else node.targets[0].id
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        or (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name))
    }


# what the minimal contract moved out of the scripts (SPEC: demos.py, the benchmark tooling, or nowhere)
REMOVED = [
    "load_expert_info",
    "load_demos",
    "demos_mean_return",
    "random_policy_returns",
    "expert_command",
    "demos_command",
    "SHIPPED_EXPERTS",
    "missing_expert_hint",
    "package_versions",
    "hardware_info",
    "log_metrics",
    "exit_if_non_finite",
    "exit_on_stop_signals",
    "save_expert",
]
# the blocks that only some scripts carry (tests/test_shared_blocks.py: the plumbing every script has, and identical copies)
WHERE = {"load_expert": set(LOADS_DEMOS), "save_checkpoint": set(RESUMABLE), "load_checkpoint": set(RESUMABLE)}


@pytest.mark.parametrize("name", [*WHERE, *REMOVED])
def test_the_shared_blocks_are_where_they_apply_and_the_removed_ones_nowhere(name):
    """Only the scripts that load demos load an expert folder, only the resumable ones checkpoint, and what the contract
    moved out of the scripts is in none of them."""
    holders = {script for script in ALL if name in top_level_names(SCRIPTS / f"{script}.py")}
    assert holders == WHERE.get(name, set()), holders ^ WHERE.get(name, set())
