"""Shared test helpers: run a cleanil script as a user would (its own process in a scratch folder) and read its outputs."""

import csv
import json
import os
import signal
import sys
from pathlib import Path

import forked_script
import pytest

# One thread for torch in the pytest workers too (the scripts' subprocesses get it from run_script): two workers on
# two cores, each with torch's default of one thread per core, oversubscribe them and OpenMP's waiting threads spin;
# the in-process training tests ran 4x slower that way (test_iq_learn's SAC test: 51 s against 13 s).
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "cleanil"
EXPERTS = REPO / "experts"
sys.path.insert(0, str(SCRIPTS))  # so a test can `import sac` and check its functions on toy tensors


def run_script(script, *args, cwd, timeout=600, check=True, env_vars=None):
    """python cleanil/<script> <args> in cwd, one thread, wandb offline; returns the CompletedProcess. The process is
    forked from one that has imported torch already (forked_script.py): the same run, without ~3 s of imports."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env_vars or {})}
    result = forked_script.run(str(SCRIPTS / script), list(map(str, args)), cwd=cwd, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(result.args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def run_script_recording_wandb(script, *args, cwd, monkeypatch):
    """python cleanil/<script> <args> --track, in this process, with wandb.init/log/finish replaced by a recorder;
    returns what the script logged, one dict per wandb.log call (with its step under "_step"). wandb >= 0.2x
    writes offline runs in a format with no Python reader, so this is how a test sees the logged statistics."""
    import runpy

    import wandb

    logged = []
    monkeypatch.setattr(wandb, "init", lambda *a, **k: None)
    monkeypatch.setattr(wandb, "log", lambda data, step=None, **k: logged.append({**data, "_step": step}))
    monkeypatch.setattr(wandb, "finish", lambda *a, **k: None)
    # the scripts' SIGINT/SIGTERM handlers would outlive the run in this pytest process (a later Ctrl-C would hit them)
    monkeypatch.setattr(signal, "signal", lambda *a, **k: None)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / script), *map(str, args), "--track"])
    runpy.run_path(str(SCRIPTS / script), run_name="__main__")
    return logged


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


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        help="also run the speed measurements marked `benchmark` (one at a time: pytest --benchmark -m benchmark -n 0)",
    )


def pytest_collection_modifyitems(config, items):
    # timings depend on the machine and its load, so the default suite (CI) never asserts one
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="a speed measurement: run with --benchmark -m benchmark -n 0 (see README, Speed)")
    for item in items:
        if "benchmark" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


# Minimum expert returns (issues 2 and 3): the mean of >= 50 deterministic episodes recorded in expert.json.
EXPERT_BARS = {
    "CartPole-v1": 495,
    "Acrobot-v1": -85,
    "MountainCar-v0": -110,
    "Pendulum-v1": -200,
    "InvertedPendulum-v4": 950,
    "Hopper-v4": 3000,
    "HalfCheetah-v4": 7000,
    "Walker2d-v4": 4000,
    "Ant-v4": 4000,
    "Humanoid-v4": 5000,
}
EXPERT_JSON_KEYS = {
    "env_id",
    "algorithm",
    "training_steps",
    "seed",
    "command",
    "versions",
    "expert_return_mean",
    "expert_return_std",
    "expert_episodes",
    "random_return_mean",
    "random_return_std",
    "random_episodes",
    "observation_shape",
    "action_shape",
    "action_space",
    "policy",
    "demos",
}
DEMO_KEYS = {"observations", "actions", "rewards", "next_observations", "terminations", "truncations", "episode_starts"}


def validate_expert_folder(folder, min_eval_episodes=50, min_demo_episodes=10, trained=True):
    """The DESIGN.md schema of experts/<env-id>/; returns (expert.json, demos) for further checks."""
    import numpy as np

    folder = Path(folder)
    info = json.loads((folder / "expert.json").read_text())
    assert EXPERT_JSON_KEYS <= set(info), EXPERT_JSON_KEYS - set(info)
    assert info["env_id"] == folder.name
    assert info["expert_episodes"] >= min_eval_episodes and info["random_episodes"] >= min_eval_episodes
    assert np.isfinite([info["expert_return_mean"], info["random_return_mean"]]).all()
    assert info["expert_return_mean"] > info["random_return_mean"] or not trained
    assert info["action_space"] in ("box", "discrete")
    assert info["command"] and all("cleanil/" in command for command in info["command"])
    with np.load(folder / "demos.npz") as npz:
        demos = {key: npz[key] for key in npz.files}
    assert set(demos) == DEMO_KEYS
    n = len(demos["rewards"])
    for key in DEMO_KEYS - {"episode_starts"}:
        assert len(demos[key]) == n, key
    assert demos["observations"].shape[1:] == tuple(info["observation_shape"])
    assert demos["next_observations"].shape == demos["observations"].shape
    assert demos["actions"].shape[1:] == tuple(info["action_shape"])
    starts = demos["episode_starts"]
    assert starts[0] == 0 and (np.diff(starts) > 0).all() and starts[-1] < n
    ends = np.append(starts[1:], n) - 1
    # every stored episode is complete: it ends in a termination or truncation, and nothing ends inside it
    done = demos["terminations"] | demos["truncations"]
    assert done[ends].all() and done.sum() == len(starts)
    assert len(starts) == info["demos"]["episodes"] >= min_demo_episodes
    assert np.isfinite(demos["observations"]).all() and np.isfinite(demos["rewards"]).all()
    # consecutive transitions chain: s'_t == s_{t+1} inside an episode
    inside = np.setdiff1d(np.arange(n - 1), ends)
    np.testing.assert_allclose(demos["next_observations"][inside], demos["observations"][inside + 1], atol=1e-5)
    return info, demos


def load_expert_mlp(folder):
    """The expert policy rebuilt from expert.json alone (no trainer import): obs batch (np) -> action batch (np)."""
    import numpy as np
    import torch
    import torch.nn as nn

    folder = Path(folder)
    spec = json.loads((folder / "expert.json").read_text())["policy"]
    layers = []
    for fan_in, fan_out in zip(spec["layers"][:-1], spec["layers"][1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    mlp = nn.Sequential(*layers[:-1])
    mlp.load_state_dict(torch.load(folder / spec["file"], weights_only=True))

    @torch.no_grad()
    def act(obs):
        out = mlp(torch.as_tensor(np.asarray(obs), dtype=torch.float32))
        if spec["output"] == "argmax":
            return out.argmax(-1).numpy()
        return (torch.tanh(out) * torch.tensor(spec["action_scale"]) + torch.tensor(spec["action_bias"])).numpy()

    return act
