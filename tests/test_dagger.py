"""dagger.py: beta schedule, expert policy loader and losses on toy tensors; smoke runs of every flag path; learning runs on
CartPole-v1 and Pendulum-v1 with the shipped experts; bad input."""

import json
import math
import re
import runpy
import shutil
import sys

import dagger
import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import EXPERTS, SCRIPTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script

ROUND_LINE = re.compile(
    r"^round (\d+)/(\d+): beta (\S+), dataset_size (\d+), bc_loss (\S+?)(?:, expert_agreement (\S+?))?"
    r"(?:, expert_action_mse (\S+))?(?:, expert_share (\S+))?$",
    re.M,
)


def parse_rounds(stdout):
    """The per-round lines dagger.py prints:
    [(round, beta, dataset_size, bc_loss, agreement or None, mse or None, expert share of executed actions or None)]."""
    return [
        (int(m[1]), float(m[3]), int(m[4]), float(m[5]), m[6] and float(m[6]), m[7] and float(m[7]), m[8] and float(m[8]))
        for m in ROUND_LINE.finditer(stdout)
    ]


def demo_episode_lengths(env_id):
    with np.load(EXPERTS / env_id / "demos.npz") as demos:
        return np.diff(np.append(demos["episode_starts"], len(demos["rewards"])))


def test_beta_schedule():
    linear = [dagger.beta_schedule(i, "linear", 4, 0.5) for i in range(7)]
    assert linear == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0])
    exponential = [dagger.beta_schedule(i, "exponential", 4, 0.5) for i in range(5)]
    assert exponential == pytest.approx([1.0, 0.5, 0.25, 0.125, 0.0625])
    assert dagger.beta_schedule(3, "exponential", 4, 0.0) == 0.0  # p = 0: the paper's beta_i = I(i = 1)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_expert_loader_reproduces_demo_actions(env_id):
    info = json.loads((EXPERTS / env_id / "expert.json").read_text())
    expert = dagger.load_expert_policy(EXPERTS / env_id, info, torch.device("cpu"))
    with np.load(EXPERTS / env_id / "demos.npz") as demos:
        observations, actions = demos["observations"], demos["actions"]
    with torch.no_grad():
        predicted = expert(torch.as_tensor(observations)).numpy()
    assert predicted.shape == actions.shape
    if info["action_space"] == "discrete":
        # Batched and one-at-a-time matmuls round differently, so a near-tie between two Q-values may flip the argmax:
        # demand exact agreement where the top two outputs are clearly apart, and near-total agreement overall.
        with torch.no_grad():
            top_two = expert.mlp(torch.as_tensor(observations)).topk(2, dim=-1).values.numpy()
        # (1e-5 relative: ~100 float32 ulps of the Q-values, far above any rounding difference; CartPole's Q-values
        # of ~90 sit close together, so 97% of its states clear it)
        clear = top_two[:, 0] - top_two[:, 1] > 1e-5 * np.maximum(1.0, np.abs(top_two[:, 0]))
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(predicted[clear], actions[clear])
        assert (predicted == actions).mean() >= 0.999
    else:
        np.testing.assert_allclose(predicted, actions, atol=1e-5)


def test_bc_loss_is_the_negative_log_likelihood():
    torch.manual_seed(0)
    obs = torch.randn(32, 3)
    categorical = dagger.Policy(np.zeros(3), np.ones(3), gym.spaces.Discrete(4), 16)
    labels = torch.randint(0, 4, (32,))
    cross_entropy = F.cross_entropy(categorical.mlp(obs), labels)
    assert dagger.bc_loss(categorical, obs, labels).item() == pytest.approx(cross_entropy.item(), rel=1e-6)
    assert torch.equal(categorical.deterministic_action(obs), categorical.mlp(obs).argmax(-1))

    gaussian = dagger.Policy(np.ones(3), 2 * np.ones(3), gym.spaces.Box(-1.0, 1.0, (2,)), 16)
    with torch.no_grad():
        gaussian.log_std.copy_(torch.tensor([-1.0, 0.5]))
    targets = torch.rand(32, 2) * 2 - 1
    mean, std = gaussian.mlp((obs - 1) / 2), torch.tensor([-1.0, 0.5]).exp()
    nll = (0.5 * ((targets - mean) / std) ** 2 + std.log() + 0.5 * math.log(2 * math.pi)).sum(-1).mean()
    assert dagger.bc_loss(gaussian, obs, targets).item() == pytest.approx(nll.item(), rel=1e-5)
    # deterministic action = the mean, clipped to the action box
    assert torch.equal(gaussian.deterministic_action(obs), mean.clamp(-1, 1))


def test_train_policy_fits_the_expert_labels():
    torch.manual_seed(0)
    obs = torch.randn(512, 2)
    labels = (obs[:, 0] > obs[:, 1]).long()
    policy = dagger.Policy(np.zeros(2), np.ones(2), gym.spaces.Discrete(2), 32)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    dagger.train_policy(policy, optimizer, obs, labels, epochs=30, batch_size=64)
    assert dagger.expert_agreement(policy.deterministic_action(obs), labels, None) > 0.97


def test_expert_agreement():
    assert dagger.expert_agreement(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), None) == 0.75
    learner, expert = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.05, -0.05]]), torch.zeros(3, 2)
    # within tolerance only if every coordinate is
    assert dagger.expert_agreement(learner, expert, torch.tensor([0.1, 0.1])).item() == pytest.approx(2 / 3)


def test_load_expert_subsamples_each_episode_from_a_random_offset():
    env = gym.make("Pendulum-v1")
    with np.load(EXPERTS / "Pendulum-v1" / "demos.npz") as demos:
        all_observations, starts = demos["observations"], demos["episode_starts"]
    lengths = demo_episode_lengths("Pendulum-v1")
    _, loaded = dagger.load_expert(EXPERTS / "Pendulum-v1", env, 3, 7, seed=0, keys=("observations",))
    assert set(loaded) == {"observations"}  # only the requested keys are read
    assert sum(lengths[:3] // 7) <= len(loaded["observations"]) <= sum(-(-lengths[:3] // 7))
    rows = {row.tobytes(): index for index, row in enumerate(all_observations)}
    index = np.array([rows[row.tobytes()] for row in loaded["observations"]])
    assert index.max() < starts[3]  # the first three episodes only
    for start, end in zip(starts[:3], starts[1:4]):  # every 7th transition of each, from an offset below 7
        kept = index[(index >= start) & (index < end)]
        assert kept[0] - start < 7 and np.all(np.diff(kept) == 7)


SMOKE_CASES = {
    "discrete-linear": ("CartPole-v1", ["--beta-schedule", "linear", "--rounds", 3, "--beta-rampdown-rounds", 2]),
    "discrete-exponential-subsample-track": (
        "CartPole-v1",
        ["--beta-schedule", "exponential", "--total-timesteps", 300, "--subsample-frequency", 4, "--track"],
    ),
    "continuous-linear-subsample": ("Pendulum-v1", ["--beta-schedule", "linear", "--rounds", 3, "--subsample-frequency", 4]),
    "continuous-exponential-track": (
        "Pendulum-v1",
        ["--beta-schedule", "exponential", "--rounds", 3, "--beta-decay", 0.3, "--track"],
    ),
}


@pytest.mark.parametrize("case", SMOKE_CASES)
def test_smoke(case, tmp_path):
    env_id, flags = SMOKE_CASES[case]
    result = run_script(
        "dagger.py",
        "--env-id",
        env_id,
        "--steps-per-round",
        100,
        "--eval-frequency",
        100,
        "--eval-episodes",
        2,
        "--num-expert-trajectories",
        2,
        "--epochs-per-round",
        2,
        *flags,
        cwd=tmp_path,
    )
    (run_dir,) = run_dirs(tmp_path)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == [0, 100, 200, 300]
    assert all(math.isfinite(value) for row in rows for value in row.values())
    summary = read_summary(run_dir)
    assert math.isfinite(summary["final_normalized_score"]) and math.isfinite(summary["best_normalized_score"])
    assert summary["args"]["rounds"] == 3 and summary["args"]["total_timesteps"] == 300

    # round 0 holds the (subsampled) first two demo episodes; each round then aggregates exactly steps-per-round pairs
    rounds = parse_rounds(result.stdout)
    assert [r[0] for r in rounds] == [0, 1, 2, 3], result.stdout
    k = int(flags[flags.index("--subsample-frequency") + 1]) if "--subsample-frequency" in flags else 1
    lengths = demo_episode_lengths(env_id)[:2]
    assert sum(lengths // k) <= rounds[0][2] <= sum(-(-lengths // k))
    assert np.all(np.diff([r[2] for r in rounds]) == 100)
    args = summary["args"]
    assert [r[1] for r in rounds] == pytest.approx(
        [dagger.beta_schedule(i, args["beta_schedule"], args["beta_rampdown_rounds"], args["beta_decay"]) for i in range(4)],
        abs=1e-3,
    )
    assert all(math.isfinite(r[3]) for r in rounds)
    assert all(0 <= r[4] <= 1 for r in rounds[1:])
    if env_id == "Pendulum-v1":
        assert all(math.isfinite(r[5]) and r[5] >= 0 for r in rounds[1:])
    if "--track" in flags:
        (wandb_run,) = (tmp_path / "wandb").glob("offline-run-*")
        assert list(wandb_run.glob("run-*.wandb"))


@pytest.mark.parametrize(
    "schedule, expected_share",
    [
        (["--beta-schedule", "exponential", "--beta-decay", 1.0], 1.0),
        (["--beta-schedule", "linear", "--beta-rampdown-rounds", 1], 0.0),
    ],
)
def test_beta_is_the_share_of_expert_actions_executed(schedule, expected_share, tmp_path):
    """beta_i = 1: every executed action is the expert's; beta_i = 0: none is (the mixture pi_i of Alg. 3.1)."""
    result = run_script(
        "dagger.py",
        "--env-id",
        "CartPole-v1",
        "--steps-per-round",
        100,
        "--rounds",
        2,
        "--eval-frequency",
        200,
        "--eval-episodes",
        1,
        "--num-expert-trajectories",
        1,
        "--epochs-per-round",
        1,
        *schedule,
        cwd=tmp_path,
    )
    rounds = parse_rounds(result.stdout)[1:]
    assert [r[1] for r in rounds] == [expected_share] * 2
    assert [r[6] for r in rounds] == [expected_share] * 2, result.stdout


def test_every_aggregated_state_is_labelled_by_the_expert(tmp_path, monkeypatch):
    """D_i = {(s, pi*(s))} (Alg. 3.1), read from the script's globals after two Pendulum-v1 rounds in which the learner
    acts (beta 0 after round 0): every pair main appended to D carries pi*'s action at its state, not the learner's
    that was executed there. Main builds D itself, so only a run shows it."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "Pendulum-v1", "--steps-per-round", 100, "--rounds", 2, "--eval-frequency", 200]
    flags += ["--eval-episodes", 1, "--num-expert-trajectories", 1, "--epochs-per-round", 1, "--min-updates-per-round", 10]
    flags += ["--beta-schedule", "linear", "--beta-rampdown-rounds", 1]
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "dagger.py"), *map(str, flags)])
    script = runpy.run_path(str(SCRIPTS / "dagger.py"), run_name="__main__")
    start, end = len(script["demo_obs"]), script["dataset_size"]
    assert end - start == 200
    with torch.no_grad():
        expert_actions = script["expert"](script["dataset_obs"][start:end])
        learner_actions = script["policy"].deterministic_action(script["dataset_obs"][start:end])
    torch.testing.assert_close(script["dataset_actions"][start:end], expert_actions)
    # the learner, barely trained, still acts otherwise at these states: its labels would be told apart
    assert (learner_actions - expert_actions).abs().max() > 0.1


@pytest.mark.learning
def test_dagger_learns_cartpole(tmp_path):
    # one expert episode, every 20th state: too little for BC alone; the rounds' expert labels close the gap
    result = run_script(
        "dagger.py",
        "--env-id",
        "CartPole-v1",
        "--num-expert-trajectories",
        1,
        "--subsample-frequency",
        20,
        "--rounds",
        8,
        "--steps-per-round",
        500,
        "--eval-frequency",
        500,
        cwd=tmp_path,
    )
    rows = read_eval_csv(run_dirs(tmp_path)[0])
    assert rows[-1]["global_step"] == 4000
    assert rows[-1]["eval_return_mean"] >= 475, result.stdout


@pytest.mark.learning
def test_dagger_learns_pendulum(tmp_path):
    # 20 expert states: BC alone scores below 0; the aggregated expert labels bring the learner to the expert
    result = run_script(
        "dagger.py",
        "--env-id",
        "Pendulum-v1",
        "--num-expert-trajectories",
        1,
        "--subsample-frequency",
        10,
        "--rounds",
        6,
        "--steps-per-round",
        1000,
        "--eval-frequency",
        1000,
        cwd=tmp_path,
    )
    rows = read_eval_csv(run_dirs(tmp_path)[0])
    assert rows[-1]["global_step"] == 6000
    assert rows[-1]["normalized_score"] >= 0.9, result.stdout


@pytest.mark.parametrize("damage", ["no-policy-file", "no-policy-spec"])
def test_an_expert_folder_without_its_policy_is_one_clear_sentence(damage, tmp_path):
    expert_copy = tmp_path / "expert"
    shutil.copytree(EXPERTS / "CartPole-v1", expert_copy)
    if damage == "no-policy-file":
        (expert_copy / "policy.pt").unlink()
    else:
        info = json.loads((expert_copy / "expert.json").read_text())
        (expert_copy / "expert.json").write_text(json.dumps({key: value for key, value in info.items() if key != "policy"}))
    result = run_script("dagger.py", "--env-id", "CartPole-v1", "--expert-path", expert_copy, cwd=tmp_path, check=False)
    assert_clean_error(result, f"error: {expert_copy} has no expert policy", "`python cleanil/demos.py --from-policy`")
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_experts_folder_names_the_command_that_checks_it(tmp_path):
    folder = tmp_path / "experts" / "CartPole-v1"
    result = run_script("dagger.py", "--env-id", "CartPole-v1", "--expert-path", folder, cwd=tmp_path, check=False)
    assert_clean_error(result, f"error: {folder} is not a usable expert folder", f"python cleanil/demos.py --check {folder}")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--rounds", 0], "--rounds must be positive"),
        (["--total-timesteps", 250, "--steps-per-round", 100], "not a positive multiple of --steps-per-round"),
        (["--num-expert-trajectories", 10_000], "--num-expert-trajectories 10000 is not between 1 and its"),
        (["--env-id", "Acrobot-v1", "--expert-path", EXPERTS / "CartPole-v1"], "recorded on CartPole-v1, not Acrobot-v1"),
        (["--env-id", "NoSuchEnv-v0"], "unknown environment id"),
    ],
    ids=["zero-rounds", "timesteps-not-a-multiple", "too-many-trajectories", "expert-of-another-env", "unknown-env"],
)
def test_bad_input_is_a_clean_error(flags, fragment, tmp_path):
    result = run_script("dagger.py", *flags, cwd=tmp_path, check=False)
    assert_clean_error(result, fragment)
