"""One formatter and linter for every Python file (pyproject.toml: ruff at CleanRL's line length 127, pycodestyle,
pyflakes, import order): a script that drifts from the format or carries an undefined name fails the suite."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_passes(command):
    result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"`ruff {' '.join(command)}` failed (run `ruff format . && ruff check --fix .`):\n"
        + (result.stdout + result.stderr)[-4000:]
    )
