"""bc.py: the likelihoods and the BC loss on toy tensors, a mixture head that fits what a Gaussian cannot, demo
loading and subsampling, every flag path end to end, bad input, and learning from the shipped demos."""

import json
import math

import bc
import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import EXPERTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script


def test_bc_loss_on_toy_batch():
    # zeroed last layer: the head outputs its bias whatever the observation, so the NLL is known in closed form
    policy = bc.Policy("categorical", torch.zeros(3), torch.ones(3), gym.spaces.Discrete(2), hidden_size=8)
    with torch.no_grad():
        policy.network[-1].weight.zero_()
        policy.network[-1].bias.copy_(torch.log(torch.tensor([0.2, 0.8])))
    loss = bc.bc_loss(policy, torch.randn(3, 3), torch.tensor([0, 1, 1]))
    assert loss.item() == pytest.approx(-(math.log(0.2) + 2 * math.log(0.8)) / 3, rel=1e-5)

    # Gaussian on actions in [-1, 3], rescaled by action_scale 2 and bias 1; a raw log_std of 0 maps to the middle of
    # [min, max]
    box = gym.spaces.Box(-1.0, 3.0, (1,))
    policy = bc.Policy("gaussian", torch.zeros(3), torch.ones(3), box, hidden_size=8, log_std_range=(-5.0, 2.0))
    assert policy.action_scale.tolist() == [2.0] and policy.action_bias.tolist() == [1.0]
    with torch.no_grad():
        policy.network[-1].weight.zero_()
        policy.network[-1].bias.copy_(torch.tensor([0.5, 0.0]))
    actions = torch.tensor([[3.0], [-1.0], [1.0]])
    expected = -torch.distributions.Normal(0.5, math.exp(-1.5)).log_prob((actions - 1.0) / 2.0).mean()
    assert bc.bc_loss(policy, torch.randn(3, 3), actions).item() == pytest.approx(expected.item(), rel=1e-5)


def test_beta_nll_weights_each_dim_by_its_held_sigma():
    torch.manual_seed(0)
    box = gym.spaces.Box(np.array([-1.0, -1.0]), np.array([3.0, 1.0]))  # action_scale [2, 1], action_bias [1, 0]
    policy = bc.Policy("gaussian", torch.zeros(3), torch.ones(3), box, hidden_size=8)
    obs, actions = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1
    mean, log_std = policy(obs)
    scaled = (actions - policy.action_bias) / policy.action_scale
    for beta in (0.0, 0.5, 1.0):  # beta = 0 is plain maximum likelihood (weights 1)
        weights = (2 * beta * log_std).exp()
        per_dim = -0.5 * ((scaled - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        expected = -(weights * per_dim).sum(-1).mean()
        assert bc.bc_loss(policy, obs, actions, beta).item() == pytest.approx(expected.item(), rel=1e-5)
    # beta = 1: the mean's gradient is the squared error's, whatever sigma is (the weight is held fixed); a zeroed last
    # layer makes mu and sigma its bias, so d loss / d mu = mean_i (mu - a_i) (plain NLL: that over sigma^2)
    with torch.no_grad():
        policy.network[-1].weight.zero_()
        policy.network[-1].bias.copy_(torch.tensor([0.3, -0.2, -1.0, 0.5]))
    mu = policy(obs)[0][0].detach()
    sigma = policy(obs)[1][0].detach().exp()
    for beta, scale in ((1.0, 1.0), (0.0, sigma**-2)):
        policy.zero_grad()
        bc.bc_loss(policy, obs, actions, beta).backward()
        torch.testing.assert_close(policy.network[-1].bias.grad[:2], (mu - scaled.mean(0)) * scale)


def test_mixture_log_prob_is_a_normalised_mixture_density():
    torch.manual_seed(0)
    logits, means, log_stds = torch.randn(4, 3), torch.randn(4, 3, 2), 0.3 * torch.randn(4, 3, 2)
    actions = torch.randn(4, 2)
    D = torch.distributions
    reference = D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(D.Normal(means, log_stds.exp()), 1))
    torch.testing.assert_close(bc.mixture_log_prob(logits, means, log_stds, actions), reference.log_prob(actions))
    # a 1-D mixture integrates to 1 on a grid, even with a component far narrower than the others
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)[:, None]
    logits, means, log_stds = (
        torch.tensor(x, dtype=torch.float64) for x in ([[0.0, 1.0, -1.0]], [[[-2.0], [0.5], [3.0]]], [[[0.0], [-3.0], [-0.5]]])
    )
    density = bc.mixture_log_prob(logits, means, log_stds, grid).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-6)


def test_mixture_head_fits_a_bimodal_expert_that_a_gaussian_cannot():
    # the lecture's example: the expert swerves left or right around an obstacle, never straight ahead
    torch.manual_seed(0)
    sample = lambda n: torch.where(torch.rand(n, 1) < 0.5, -0.6, 0.6) + 0.05 * torch.randn(n, 1)
    obs, actions, held_out = torch.zeros(2048, 1), sample(2048), sample(2048)
    held_out_ll = {}
    for head in ("gaussian", "mixture"):
        box = gym.spaces.Box(-1.0, 1.0, (1,))
        policy = bc.Policy(head, torch.zeros(1), torch.ones(1), box, hidden_size=32, num_components=5)
        optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
        for _ in range(1500):
            index = torch.randint(0, len(obs), (256,))
            loss = bc.bc_loss(policy, obs[index], actions[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            held_out_ll[head] = policy.log_prob(torch.zeros(len(held_out), 1), held_out).mean().item()
            mode = policy.deterministic_action(torch.zeros(1, 1)).item()
        if head == "mixture":  # acts like one of the two modes, not like their average
            assert abs(abs(mode) - 0.6) < 0.1, mode
    # best single Gaussian: N(0, 0.6^2 + 0.05^2), held-out LL ~ -0.91; the true density: LL ~ 0.88
    assert held_out_ll["gaussian"] < -0.8, held_out_ll
    assert held_out_ll["mixture"] > 0.7, held_out_ll
    assert held_out_ll["mixture"] > held_out_ll["gaussian"] + 1.0, held_out_ll


def write_expert(expert_dir, episode_lengths, obs_dim=4, env_id="CartPole-v1"):
    """A fake expert folder whose observation rows hold their own transition index (to check which rows were kept)."""
    n = sum(episode_lengths)
    expert_dir.mkdir(parents=True, exist_ok=True)
    info = {"env_id": env_id, "expert_return_mean": 500.0, "random_return_mean": 20.0}
    (expert_dir / "expert.json").write_text(json.dumps(info))
    np.savez_compressed(
        expert_dir / "demos.npz",
        observations=np.repeat(np.arange(n, dtype=np.float32)[:, None], obs_dim, 1),
        actions=np.zeros(n, dtype=np.int64),
        rewards=np.ones(n, dtype=np.float32),
        next_observations=np.zeros((n, obs_dim), dtype=np.float32),
        terminations=np.zeros(n, dtype=bool),
        truncations=np.zeros(n, dtype=bool),
        episode_starts=np.cumsum([0, *episode_lengths[:-1]]),
    )


def test_load_expert_takes_first_trajectories_and_subsamples_each_from_a_random_offset(tmp_path):
    write_expert(tmp_path, [10, 7, 5, 9])
    env = gym.make("CartPole-v1")
    info, demos = bc.load_expert(tmp_path, env, num_trajectories=3, subsample_frequency=3, seed=0, keys=("observations",))
    assert info["expert_return_mean"] == 500.0 and bc.normalized_score(260.0, info) == 0.5
    assert set(demos) == {"observations"}  # only the requested keys are read
    kept = demos["observations"][:, 0].astype(int)
    for start, end in ((0, 10), (10, 17), (17, 22)):
        rows = kept[(kept >= start) & (kept < end)]
        assert rows[0] - start < 3 and (np.diff(rows) == 3).all() and end - rows[-1] <= 3, rows
    assert kept.max() < 22  # the fourth trajectory was not asked for
    offsets = {
        tuple(bc.load_expert(tmp_path, env, 3, 3, seed, ("observations",))[1]["observations"][:, 0] % 3) for seed in range(10)
    }
    assert len(offsets) > 1  # the offset is random, drawn per seed
    _, full = bc.load_expert(tmp_path, env, 4, 1, 0, ("observations", "actions"))
    assert len(full["observations"]) == len(full["actions"]) == 31


def test_load_expert_rejects_demos_that_do_not_match_the_env(tmp_path):
    write_expert(tmp_path / "narrow", [5, 5], obs_dim=3)
    with pytest.raises(SystemExit) as error:
        bc.load_expert(tmp_path / "narrow", gym.make("CartPole-v1"), 2, 1, 0, ("observations", "actions"))
    message = str(error.value.code)
    assert "its observations are not finite or not of shape (N, *(4,))" in message, message
    assert f"python cleanil/demos.py --check {tmp_path / 'narrow'}" in message, message
    # another env id with the same shapes: refused, unless any_env says to use it anyway
    write_expert(tmp_path / "v0", [5, 5], env_id="CartPole-v0")
    with pytest.raises(SystemExit) as error:
        bc.load_expert(tmp_path / "v0", gym.make("CartPole-v1"), 2, 1, 0, ("observations",))
    assert "recorded on CartPole-v0, not CartPole-v1" in str(error.value.code)
    assert (
        len(bc.load_expert(tmp_path / "v0", gym.make("CartPole-v1"), 2, 1, 0, ("observations",), True)[1]["observations"])
        == 10
    )


SMOKE = {
    "discrete": ["--env-id", "CartPole-v1"],
    "discrete-subsample": ["--env-id", "CartPole-v1", "--subsample-frequency", "5", "--no-normalize-observations"],
    "gaussian-subsample": ["--env-id", "Pendulum-v1", "--policy", "gaussian", "--subsample-frequency", "4"],
    "mixture": ["--env-id", "Pendulum-v1", "--policy", "mixture", "--num-components", "3"],
    "mixture-track-video": ["--env-id", "InvertedPendulum-v4", "--policy", "mixture", "--track", "--capture-video"],
    "any-env": ["--env-id", "CartPole-v0", "--expert-path", str(EXPERTS / "CartPole-v1"), "--any-env"],
}


@pytest.mark.parametrize("flags", SMOKE.values(), ids=SMOKE.keys())
def test_smoke(workdir, flags):
    run_script(
        "bc.py",
        *flags,
        "--total-timesteps",
        200,
        "--eval-frequency",
        100,
        "--eval-episodes",
        2,
        "--num-expert-trajectories",
        2,
        "--batch-size",
        64,
        cwd=workdir,
        env_vars={"MUJOCO_GL": "egl"},
    )
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == [0, 100, 200]
    assert all(np.isfinite(list(row.values())).all() for row in rows), rows
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"], summary["mean_sps"]]).all(), summary
    assert summary["precision"] == "fp32" and summary["device"] == "cpu", summary
    subsample = int(flags[flags.index("--subsample-frequency") + 1]) if "--subsample-frequency" in flags else 1
    assert summary["args"]["subsample_frequency"] == subsample
    if "--track" in flags:
        assert list((workdir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    if "--capture-video" in flags:  # the first episode of each of the 3 evaluations
        assert len(list((workdir / "videos").rglob("*.mp4"))) == 3, "no video recorded"


def test_more_trajectories_than_shipped_is_one_clear_sentence(workdir):
    result = run_script("bc.py", "--env-id", "CartPole-v1", "--num-expert-trajectories", 100_000, cwd=workdir, check=False)
    assert_clean_error(result, "--num-expert-trajectories 100000 is not between 1 and its", "demos.py --check")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (workdir / "runs").exists()


def test_missing_expert_names_the_command_that_checks_it(workdir):
    result = run_script("bc.py", "--env-id", "Acrobot-v1", "--expert-path", workdir / "nowhere", cwd=workdir, check=False)
    assert_clean_error(
        result,
        f"error: {workdir / 'nowhere'} is not a usable expert folder",
        f"python cleanil/demos.py --check {workdir / 'nowhere'}",
    )
    assert not (workdir / "runs").exists()


def test_an_expert_of_another_env_needs_any_env(workdir):
    flags = ["--env-id", "CartPole-v0", "--expert-path", EXPERTS / "CartPole-v1"]
    result = run_script("bc.py", *flags, cwd=workdir, check=False)
    assert_clean_error(result, "recorded on CartPole-v1, not CartPole-v0 (--any-env uses it anyway)")
    assert not (workdir / "runs").exists()


def test_a_diverging_loss_ends_the_run_with_one_error_line(workdir):
    flags = ["--learning-rate", "1e30", "--total-timesteps", 20, "--eval-frequency", 10, "--eval-episodes", 1]
    result = run_script("bc.py", "--env-id", "Pendulum-v1", *flags, cwd=workdir, check=False)
    assert_clean_error(result, "error: non-finite BC loss at step 10; lower --learning-rate.")


@pytest.mark.learning
def test_bc_cartpole_reaches_expert_return(workdir):
    run_script(
        "bc.py",
        "--env-id",
        "CartPole-v1",
        "--num-expert-trajectories",
        10,
        "--total-timesteps",
        3000,
        "--eval-frequency",
        1000,
        cwd=workdir,
    )
    rows = read_eval_csv(run_dirs(workdir)[0])
    assert rows[-1]["eval_return_mean"] >= 475, rows


@pytest.mark.learning
def test_bc_pendulum_gaussian_recovers_most_of_the_expert(workdir):
    # Pendulum's swing-up punishes small action errors: with 10 demos the beta-NLL default reaches 0.99-1.04 over seeds
    # 1-3 (0.93 at 2k steps), plain maximum likelihood (--nll-beta 0) 0.85, 0.63, 0.41, its mean underfitted
    run_script(
        "bc.py",
        "--env-id",
        "Pendulum-v1",
        "--num-expert-trajectories",
        10,
        "--total-timesteps",
        10_000,
        "--eval-frequency",
        5_000,
        cwd=workdir,
    )
    rows = read_eval_csv(run_dirs(workdir)[0])
    assert rows[-1]["normalized_score"] >= 0.9, rows
