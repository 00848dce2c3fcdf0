"""Shared test helpers: run a cleanil script as a user would (a subprocess in a scratch folder) and read its outputs."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "cleanil"
EXPERTS = REPO / "experts"
sys.path.insert(0, str(SCRIPTS))  # so a test can `import sac` and check its functions on toy tensors


def run_script(script, *args, cwd, timeout=600, check=True, env_vars=None):
    """python cleanil/<script> <args> in cwd, one thread, wandb offline; returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env_vars or {})}
    command = [sys.executable, str(SCRIPTS / script), *map(str, args)]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def run_dirs(cwd):
    return sorted((Path(cwd) / "runs").iterdir())


def read_eval_csv(run_dir):
    with open(Path(run_dir) / "eval.csv") as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


def read_summary(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())


def assert_clean_error(result, *fragments):
    """A user mistake: non-zero exit, one sentence on stderr naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture
def workdir(tmp_path):
    return tmp_path
