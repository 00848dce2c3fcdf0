"""A behaviour-preserving rewrite is proven by seeded short runs (DESIGN.md, Tests): every case below was run in fp32
with the code before the minimal rewrite (`python tests/test_same_behaviour.py --record`, which writes
tests/behaviour.json), and the same command must give the same eval_return_mean column now, bit for bit, so the
archived results of the old code stay results of this code. Floating-point sums depend on the CPU's instruction set,
so the comparison runs on the CPU that recorded the column and is skipped, with the reason, on another."""

import json
import platform
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_eval_csv, run_dirs, run_script

BF16_SCRIPTS = ("sac.py", "cfil.py", "nail.py", "sqil.py", "iq_learn.py")
RECORD = Path(__file__).with_name("behaviour.json")
SHORT_TRPO = ["--total-timesteps", "6144", "--eval-frequency", "2048", "--eval-episodes", "2"]
SHORT_OFF_POLICY = ["--total-timesteps", "1500", "--learning-starts", "500", "--eval-frequency", "500", "--eval-episodes", "2"]
CASES = {
    "reinforce-CartPole": ("reinforce.py", "CartPole-v1", ["--total-timesteps", "6000", "--eval-frequency", "2000"]),
    "bc-CartPole": ("bc.py", "CartPole-v1", ["--total-timesteps", "600", "--eval-frequency", "200"]),
    "bc-Pendulum": ("bc.py", "Pendulum-v1", ["--total-timesteps", "600", "--eval-frequency", "300"]),
    "bc-Pendulum-mixture": (
        "bc.py",
        "Pendulum-v1",
        ["--total-timesteps", "300", "--eval-frequency", "300", "--policy", "mixture"],
    ),
    "dagger-CartPole": (
        "dagger.py",
        "CartPole-v1",
        ["--total-timesteps", "2000", "--steps-per-round", "500", "--eval-frequency", "1000"],
    ),
    "dagger-Pendulum": (
        "dagger.py",
        "Pendulum-v1",
        ["--total-timesteps", "1000", "--steps-per-round", "500", "--eval-frequency", "500"],
    ),
    "bco-CartPole": (
        "bco.py",
        "CartPole-v1",
        [
            "--total-timesteps",
            "3000",
            "--pre-demo-steps",
            "1000",
            "--inverse-gradient-steps",
            "200",
            "--policy-gradient-steps",
            "200",
            "--eval-frequency",
            "1000",
        ],
    ),  # fmt: skip
    "ilpo-CartPole": (
        "ilpo.py",
        "CartPole-v1",
        ["--total-timesteps", "600", "--eval-frequency", "300", "--latent-gradient-steps", "300"],
    ),
    "gail-CartPole": ("gail.py", "CartPole-v1", SHORT_TRPO),
    "gail-Pendulum": ("gail.py", "Pendulum-v1", SHORT_TRPO),
    "gaifo-CartPole": ("gaifo.py", "CartPole-v1", SHORT_TRPO),
    "airl-CartPole": ("airl.py", "CartPole-v1", SHORT_TRPO),
    "airl-Pendulum": ("airl.py", "Pendulum-v1", SHORT_TRPO),
    "pmi_il-CartPole": (
        "pmi_il.py",
        "CartPole-v1",
        ["--total-timesteps", "3072", "--num-steps", "128", "--critic-steps", "200", "--eval-frequency", "1024"],
    ),
    "sac-Pendulum": ("sac.py", "Pendulum-v1", SHORT_OFF_POLICY),
    "dqn-CartPole": (
        "dqn.py",
        "CartPole-v1",
        ["--total-timesteps", "3000", "--learning-starts", "500", "--eval-frequency", "1000"],
    ),
    "cfil-Pendulum": ("cfil.py", "Pendulum-v1", SHORT_OFF_POLICY),
    "cfil-Hopper": (
        "cfil.py",
        "Hopper-v4",
        ["--total-timesteps", "1500", "--learning-starts", "500", "--eval-frequency", "750", "--eval-episodes", "2"],
    ),
    "nail-Pendulum": ("nail.py", "Pendulum-v1", [*SHORT_OFF_POLICY, "--epoch-steps", "500"]),
    "nail-Pendulum-ail": ("nail.py", "Pendulum-v1", [*SHORT_OFF_POLICY, "--epoch-steps", "500", "--reward", "ail"]),
    "sqil-Pendulum": ("sqil.py", "Pendulum-v1", SHORT_OFF_POLICY),
    "sqil-CartPole": ("sqil.py", "CartPole-v1", SHORT_OFF_POLICY),
    "iq_learn-Pendulum": ("iq_learn.py", "Pendulum-v1", SHORT_OFF_POLICY),
    "iq_learn-CartPole": ("iq_learn.py", "CartPole-v1", SHORT_OFF_POLICY),
}


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def eval_column(case, cwd):
    script, env_id, extra = CASES[case]
    fp32 = ["--no-bf16"] if script in BF16_SCRIPTS else []  # the others compute in fp32 only
    run_script(script, "--env-id", env_id, "--seed", "1", *fp32, *extra, cwd=cwd)
    (run_dir,) = run_dirs(cwd)
    return [[row["global_step"], row["eval_return_mean"]] for row in read_eval_csv(run_dir)]


@pytest.mark.learning
@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_run_is_unchanged(case, tmp_path):
    record = json.loads(RECORD.read_text())
    if record["cpu"] != cpu_name():
        pytest.skip(f"recorded on {record['cpu']!r}, this is {cpu_name()!r}: fp32 sums may round differently")
    assert eval_column(case, tmp_path) == record["cases"][case], f"{case}: eval_return_mean moved from the recorded run"


if __name__ == "__main__" and sys.argv[1:2] == ["--record"]:
    import tempfile

    cases = sys.argv[2:] or sorted(CASES)
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {"cpu": cpu_name(), "cases": {}}
    assert record["cpu"] == cpu_name(), "record on the CPU that recorded the others"
    for case in cases:
        with tempfile.TemporaryDirectory() as cwd:
            record["cases"][case] = eval_column(case, cwd)
        print(case, record["cases"][case], flush=True)
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(f"recorded from {REPO}")
