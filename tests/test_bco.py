"""bco.py: the blocks it shares with bc.py are bc.py's, its inverse model recovers the actions of a toy deterministic
system (discrete and continuous), it never reads the expert's actions (demos whose actions are NaN give the very same
run), every flag path end to end, bad input, and learning CartPole-v1 from state-only demos. The shared plumbing is
tests/test_shared_blocks.py's."""

import inspect
import math
import re
import runpy
import shutil
import sys

import bc
import bco
import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import EXPERTS, SCRIPTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script

SHARED = ["Policy", "categorical_log_prob", "gaussian_log_prob", "mixture_log_prob", "bc_loss"]


@pytest.mark.parametrize("name", SHARED)
def test_shared_blocks_are_bcs(name):
    # BCO is BC on inferred actions: `diff cleanil/bc.py cleanil/bco.py` shows the inverse model and the interaction only
    assert inspect.getsource(getattr(bco, name)) == inspect.getsource(getattr(bc, name))


def fit_inverse_model(inverse_model, obs, next_obs, actions, steps=400):
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(inverse_model.parameters(), lr=3e-3)
    return bco.fit(inverse_model, optimizer, bco.inverse_model_inputs(obs, next_obs), actions, steps, batch_size=128)


def test_inverse_model_recovers_the_actions_of_a_toy_discrete_system():
    # s' = s + effect[a]: each of the 3 actions pushes the state its own way, whatever the state
    torch.manual_seed(0)
    effects = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [0.0, 0.1]])

    def transitions(n):
        obs, actions = 2 * torch.randn(n, 2), torch.randint(0, 3, (n,))
        return obs, obs + effects[actions], actions

    obs, next_obs, actions = transitions(2048)
    inputs = bco.inverse_model_inputs(obs, next_obs)
    inverse_model = bco.Policy("categorical", inputs.mean(0), inputs.std(0), gym.spaces.Discrete(3), hidden_size=32)
    fit_inverse_model(inverse_model, obs, next_obs, actions)
    obs, next_obs, actions = transitions(1000)  # held out
    inputs = bco.inverse_model_inputs(obs, next_obs)
    with torch.no_grad():
        assert torch.equal(bco.infer_actions(inverse_model, inputs), actions)


def test_inverse_model_recovers_the_actions_of_a_toy_continuous_system():
    # s' = s + 0.25 a with a in [-2, 2]^2 (action_scale 2): the Gaussian inverse model's mean is the action taken
    torch.manual_seed(0)

    def transitions(n):
        obs, actions = torch.randn(n, 2), 4 * torch.rand(n, 2) - 2
        return obs, obs + 0.25 * actions, actions

    obs, next_obs, actions = transitions(4096)
    inputs = bco.inverse_model_inputs(obs, next_obs)
    inverse_model = bco.Policy("gaussian", inputs.mean(0), inputs.std(0), gym.spaces.Box(-2.0, 2.0, (2,)), hidden_size=64)
    fit_inverse_model(inverse_model, obs, next_obs, actions, steps=1500)
    obs, next_obs, actions = transitions(1000)
    with torch.no_grad():
        error = (bco.infer_actions(inverse_model, bco.inverse_model_inputs(obs, next_obs)) - actions).abs().mean().item()
    assert error < 0.05, error  # in action units, on a range of width 4


def test_fit_minimises_the_negative_log_likelihood():
    inverse_model = bco.Policy("categorical", torch.zeros(4), torch.ones(4), gym.spaces.Discrete(2), hidden_size=8)
    with torch.no_grad():
        inverse_model.network[-1].weight.zero_()
        inverse_model.network[-1].bias.copy_(torch.log(torch.tensor([0.25, 0.75])))
    nll = -(math.log(0.25) + math.log(0.75)) / 2
    loss = bco.bc_loss(inverse_model, torch.randn(2, 4), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(nll, rel=1e-5)
    # fit returns the loss of its last minibatch (taken before that step), and its Adam steps raise the likelihood
    torch.manual_seed(0)
    inputs, actions = torch.randn(64, 4), torch.ones(64, dtype=torch.long)
    optimizer = torch.optim.Adam(inverse_model.parameters(), lr=1e-2)
    assert bco.fit(inverse_model, optimizer, inputs, actions, steps=1, batch_size=16) == pytest.approx(
        -math.log(0.75), rel=1e-5
    )
    bco.fit(inverse_model, optimizer, inputs, actions, steps=50, batch_size=16)
    assert bco.bc_loss(inverse_model, inputs, actions).item() < -math.log(0.75) / 2


def test_sample_action_draws_from_the_policy_within_the_bounds():
    torch.manual_seed(0)
    policy = bco.Policy("categorical", torch.zeros(3), torch.ones(3), gym.spaces.Discrete(2), hidden_size=8)
    with torch.no_grad():
        policy.network[-1].weight.zero_()
        policy.network[-1].bias.copy_(torch.log(torch.tensor([0.3, 0.7])))
        assert bco.sample_action(policy, torch.zeros(20_000, 3)).float().mean().item() == pytest.approx(0.7, abs=0.02)
    for head in ("gaussian", "mixture"):
        space = gym.spaces.Box(np.array([-1.0, -0.5], np.float32), np.array([3.0, 0.5], np.float32))
        policy = bco.Policy(head, torch.zeros(3), torch.ones(3), space, 8, num_components=3, log_std_range=(0.0, 1.0))
        with torch.no_grad():
            actions = bco.sample_action(policy, torch.randn(5000, 3))
        assert ((actions >= torch.tensor([-1.0, -0.5])) & (actions <= torch.tensor([3.0, 0.5]))).all()
        assert actions.std(0).min() > 0.1  # sampled (std >= 1 in the rescaled space, clipped), not the mode


def test_expert_actions_are_not_among_the_keys_read():
    assert "actions" not in bco.DEMO_KEYS


def iteration_scores(stdout):
    return [float(value) for value in re.findall(r"held-out inverse model (?:accuracy|mae) ([^,\s]+)", stdout)]


COMMON = [
    "--pre-demo-steps",
    200,
    "--inverse-gradient-steps",
    20,
    "--policy-gradient-steps",
    20,
    "--eval-frequency",
    100,
    "--eval-episodes",
    2,
    "--num-expert-trajectories",
    2,
    "--batch-size",
    64,
]
SMOKE = {  # (flags, eval steps): BCO(0) stops after the 200 pre-demonstration steps; alpha 0.25 adds 50-step iterations
    "discrete-bco0-video": (["--env-id", "CartPole-v1", "--alpha", 0, "--total-timesteps", 200, "--capture-video"], [0, 200]),
    "discrete-alpha-subsample-track": (
        ["--env-id", "CartPole-v1", "--alpha", 0.25, "--total-timesteps", 300, "--subsample-frequency", 5, "--track"],
        [0, 200, 300],
    ),
    "continuous-bco0-subsample": (
        [
            "--env-id",
            "Pendulum-v1",
            "--alpha",
            0,
            "--total-timesteps",
            200,
            "--subsample-frequency",
            4,
            "--no-normalize-observations",
        ],
        [0, 200],
    ),
    "continuous-alpha-track": (
        ["--env-id", "Pendulum-v1", "--alpha", 0.25, "--total-timesteps", 300, "--track"],
        [0, 200, 300],
    ),
    "continuous-mixture-alpha": (
        ["--env-id", "Pendulum-v1", "--policy", "mixture", "--num-components", 3, "--alpha", 0.5, "--total-timesteps", 400],
        [0, 200, 300, 400],
    ),
}


@pytest.mark.parametrize("flags,steps", SMOKE.values(), ids=SMOKE.keys())
def test_smoke(workdir, flags, steps):
    result = run_script("bco.py", *COMMON, *flags, cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == steps
    assert all(np.isfinite(list(row.values())).all() for row in rows), rows
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"], summary["mean_sps"]]).all(), summary
    assert summary["args"]["alpha"] == flags[flags.index("--alpha") + 1]
    assert summary["args"]["subsample_frequency"] == (
        flags[flags.index("--subsample-frequency") + 1] if "--subsample-frequency" in flags else 1
    )
    # one held-out inverse model score per iteration: 1 + (total - pre) / (alpha * pre); accuracies in [0, 1], errors >= 0
    scores = iteration_scores(result.stdout)
    alpha, total = flags[flags.index("--alpha") + 1], flags[flags.index("--total-timesteps") + 1]
    assert len(scores) == 1 + (round((total - 200) / (alpha * 200)) if alpha else 0), result.stdout
    assert np.isfinite(scores).all() and min(scores) >= 0 and ("Pendulum" in flags[1] or max(scores) <= 1), scores
    if "--track" in flags:
        assert list((workdir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    if "--capture-video" in flags:  # the first episode of each evaluation
        assert len(list((workdir / "videos").rglob("*.mp4"))) == len(steps), "no video recorded"


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_expert_actions_are_never_read(workdir, env_id):
    """Demos whose actions are NaN (of the wrong dtype, even) give exactly the run the real demos give."""
    expert_dir = workdir / "nan-actions"
    shutil.copytree(EXPERTS / env_id, expert_dir)
    with np.load(expert_dir / "demos.npz") as npz:
        demos = {key: npz[key] for key in npz.files}
    np.savez_compressed(
        expert_dir / "demos.npz", **{**demos, "actions": np.full(demos["actions"].shape, np.nan, dtype=np.float32)}
    )
    results = []
    for name, path in (("real", EXPERTS / env_id), ("nan", expert_dir)):
        result = run_script(
            "bco.py",
            "--env-id",
            env_id,
            "--expert-path",
            path,
            "--exp-name",
            name,
            *COMMON,
            "--alpha",
            0.25,
            "--total-timesteps",
            300,
            cwd=workdir,
        )
        (run_dir,) = [d for d in run_dirs(workdir) if f"__{name}__" in d.name]
        results.append(
            [value for row in read_eval_csv(run_dir) for value in (row["global_step"], row["eval_return_mean"])]
            + iteration_scores(result.stdout)
        )
    assert results[0] == results[1] and np.isfinite(results[1]).all(), results


def test_bad_input_is_one_clear_sentence(workdir):
    result = run_script("bco.py", "--env-id", "Acrobot-v1", "--expert-path", workdir / "nowhere", cwd=workdir, check=False)
    assert_clean_error(result, "is not a usable expert folder", f"python cleanil/demos.py --check {workdir / 'nowhere'}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = run_script("bco.py", "--pre-demo-steps", 1000, "--total-timesteps", 500, cwd=workdir, check=False)
    assert_clean_error(result, "BCO needs --total-timesteps >= --pre-demo-steps")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (workdir / "runs").exists()


def test_main_labels_the_demonstrations_by_the_inverse_model_of_the_agents_own_steps(workdir, monkeypatch):
    """What main cloned in its last iteration (the script's globals after a CartPole-v1 run): the actions a~ inferred by
    M_theta at every demonstrated (s, s'), and M_theta fitted on the agent's own (s, s', a), which it predicts on held-out
    steps far above chance. Main mixes the two data sets itself, so only a run shows which went where."""
    monkeypatch.chdir(workdir)
    flags = ["--env-id", "CartPole-v1", *COMMON, "--alpha", 0, "--total-timesteps", 200, "--inverse-gradient-steps", 200]
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "bco.py"), *map(str, flags)])
    script = runpy.run_path(str(SCRIPTS / "bco.py"), run_name="__main__")
    inverse_model = script["inverse_model"]
    with torch.no_grad():
        demo_inputs = bco.inverse_model_inputs(script["obs_demo"], script["next_obs_demo"])
        torch.testing.assert_close(script["inferred_actions"], bco.infer_actions(inverse_model, demo_inputs))
        held_out_inputs, held_out_actions = script["held_out_data"]
        accuracy = (bco.infer_actions(inverse_model, held_out_inputs) == held_out_actions).float().mean()
    assert len(script["inferred_actions"]) == len(script["obs_demo"]) and accuracy > 0.8, accuracy


@pytest.mark.learning
def test_bco_cartpole_learns_from_observations_only(workdir):
    # BCO(0.1): 5000 random steps, then two iterations of 500 steps of the imitation policy (500 with seeds 1-3)
    run_script(
        "bco.py",
        "--env-id",
        "CartPole-v1",
        "--pre-demo-steps",
        5000,
        "--alpha",
        0.1,
        "--total-timesteps",
        6000,
        "--inverse-gradient-steps",
        1000,
        "--policy-gradient-steps",
        1000,
        "--eval-frequency",
        5000,
        cwd=workdir,
    )
    rows = read_eval_csv(run_dirs(workdir)[0])
    assert [row["global_step"] for row in rows] == [0, 5000, 6000]
    assert rows[-1]["eval_return_mean"] >= 450, rows
