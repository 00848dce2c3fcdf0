"""nail.py: the discriminator recovers a known log density ratio, the gradient penalty of a linear logit, DAC's absorbing
states (terminated vs truncated, in the data and in the SAC target), the NAIL / AIL rewards and pi~'s log-density on
toy tensors, both reward modes, subsampling and --track end to end, resuming from a checkpoint, bad input, and imitating
Pendulum-v1 from one demo."""
import time

import numpy as np
import pytest
import torch
from conftest import EXPERTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script

import nail

TINY = ["--env-id", "Pendulum-v1", "--total-timesteps", "300", "--learning-starts", "100", "--epoch-steps", "100",
        "--discriminator-updates-per-step", "0.2", "--eval-frequency", "150", "--eval-episodes", "2", "--batch-size", "32",
        "--discriminator-batch-size", "32", "--hidden-size", "32", "--discriminator-hidden-size", "32"]


def train_discriminator(sample_agent, sample_expert, dim, steps, penalty=0.0, seed=0):
    torch.manual_seed(seed)
    discriminator = nail.Discriminator(dim, 64)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=3e-3)
    for _ in range(steps):
        agent, expert = sample_agent(256), sample_expert(256)
        loss = nail.discriminator_loss(discriminator(agent), discriminator(expert))
        if penalty:
            loss = loss + penalty * nail.gradient_penalty(discriminator, agent, expert)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return discriminator


def test_discriminator_logit_recovers_the_log_density_ratio_of_two_gaussians():
    # agent q = N(mu, 0.7^2 I), expert p = N(0, I) in 2-D: log q/p is a known quadratic
    mu, sigma = torch.tensor([1.0, -0.5]), 0.7
    sample_q = lambda n: mu + sigma * torch.randn(n, 2)
    sample_p = lambda n: torch.randn(n, 2)

    def log_ratio(x):
        log_q = -0.5 * (((x - mu) / sigma) ** 2).sum(-1) - 2 * np.log(sigma)
        return log_q + 0.5 * (x**2).sum(-1)

    discriminator = train_discriminator(sample_q, sample_p, 2, 1500)
    torch.manual_seed(1)
    x = torch.cat([sample_q(2000), sample_p(2000)])  # where the two densities have their mass
    with torch.no_grad():
        estimate, truth = discriminator(x), log_ratio(x)
    correlation = np.corrcoef(estimate.numpy(), truth.numpy())[0, 1]
    assert correlation > 0.95, correlation
    assert (estimate - truth).abs().median() < 0.25, (estimate - truth).abs().median()


def test_gradient_penalty_vanishes_for_a_unit_norm_linear_logit_and_measures_other_slopes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 1)
    with torch.no_grad():
        linear.weight /= linear.weight.norm()
    agent, expert = torch.randn(64, 5), torch.randn(64, 5) + 3
    assert nail.gradient_penalty(lambda x: linear(x).squeeze(-1), agent, expert).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        linear.weight *= 3  # ||grad|| = 3 everywhere: (3 - 1)^2
    assert nail.gradient_penalty(lambda x: linear(x).squeeze(-1), agent, expert).item() == pytest.approx(4.0, rel=1e-5)
    # and it is differentiable in the discriminator's parameters (create_graph), pulling the slope back to 1
    nail.gradient_penalty(lambda x: linear(x).squeeze(-1), agent, expert).backward()
    assert (linear.weight.grad * linear.weight).sum() > 0


def test_gradient_penalty_caps_the_slope_of_a_separable_discriminator():
    # two far-apart 2-D point clouds: without the penalty the logit gap grows without bound; with it, ~ the distance 4
    sample_q = lambda n: torch.randn(n, 2) * 0.1 + torch.tensor([2.0, 0.0])
    sample_p = lambda n: torch.randn(n, 2) * 0.1 - torch.tensor([2.0, 0.0])
    free = train_discriminator(sample_q, sample_p, 2, 400)
    penalised = train_discriminator(sample_q, sample_p, 2, 400, penalty=10.0)
    points = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    with torch.no_grad():
        free_gap, penalised_gap = (free(points)[0] - free(points)[1]).item(), (penalised(points)[0] - penalised(points)[1]).item()
    assert free_gap > 8.0, free_gap
    assert 3.0 < penalised_gap < 5.0, penalised_gap  # |grad logit| ~ 1 along the segment between the clouds


def test_absorbing_state_augmentation_terminated_vs_truncated():
    obs = np.arange(9, dtype=np.float32).reshape(3, 3) + 1
    actions = np.array([[0.5], [-0.5], [0.25]], dtype=np.float32)
    next_obs = obs + 10
    # transition 0 goes on, 1 terminates, 2 is truncated (a time limit, not a termination)
    aug_obs, aug_actions, aug_next = nail.add_absorbing_state(obs, actions, next_obs, np.array([False, True, False]))
    absorbing = np.array([0, 0, 0, 1], dtype=np.float32)
    assert aug_obs.shape == (4, 4) and aug_actions.shape == (4, 1) and aug_next.shape == (4, 4)
    np.testing.assert_array_equal(aug_obs[:3, :3], obs)
    assert (aug_obs[:3, 3] == 0).all()  # real states carry indicator 0
    np.testing.assert_array_equal(aug_next[0], np.append(next_obs[0], 0))
    np.testing.assert_array_equal(aug_next[1], absorbing)  # termination -> the absorbing state
    np.testing.assert_array_equal(aug_next[2], np.append(next_obs[2], 0))  # truncation keeps its real next state
    np.testing.assert_array_equal(aug_obs[3], absorbing)  # one self-transition (s_a, 0, s_a) per termination
    np.testing.assert_array_equal(aug_next[3], absorbing)
    np.testing.assert_array_equal(aug_actions[3], [0.0])
    np.testing.assert_array_equal(aug_actions[:3], actions)
    # nothing terminated: no extra rows
    assert len(nail.add_absorbing_state(obs, actions, next_obs, [False, False, False])[0]) == 3
    # the discriminator sees the absorbing state with a zero action
    inputs = nail.discriminator_inputs(torch.as_tensor(aug_obs), torch.as_tensor(aug_actions), torch.tensor([2.0]), torch.tensor([0.0]))
    np.testing.assert_allclose(inputs[:, -1].numpy(), [0.25, -0.25, 0.125, 0.0])


class ToyActor(torch.nn.Module):
    """A fixed tanh-Gaussian over 1-D actions in [-2, 2] whose log pi is large: a visible entropy term."""

    def __init__(self):
        super().__init__()
        self.register_buffer("action_scale", torch.tensor([2.0]))
        self.register_buffer("action_bias", torch.tensor([0.0]))

    def forward(self, obs):
        return torch.zeros(len(obs), 1) + 0.3, torch.full((len(obs), 1), -3.0)

    get_action = nail.Actor.get_action


NO_REFERENCE = lambda obs, actions: torch.zeros(())  # plain SAC / AIL: log pi~ = 0


def test_soft_q_target_bootstraps_through_the_absorbing_state_with_a_zero_action_and_no_entropy():
    torch.manual_seed(0)
    qf = nail.SoftQEnsemble(3, 1, 16)
    obs = torch.randn(8, 3)
    obs[:, -1] = 0
    absorbing = torch.tensor([[0.0, 0.0, 1.0]]).expand(8, 3)
    batch = (obs, torch.rand(8, 1), torch.randn(8), absorbing, torch.ones(8))
    actor = ToyActor()
    losses = [nail.soft_q_loss(qf, qf, actor, batch, alpha, 0.9, NO_REFERENCE)[0].item() for alpha in (0.0, 1.0, 100.0)]
    assert losses[0] == pytest.approx(losses[1]) == pytest.approx(losses[2])  # no entropy term in s_a
    with torch.no_grad():
        q_target = batch[2] + 0.9 * qf(absorbing, torch.zeros(8, 1)).min(0).values  # not zeroed: bootstrapped
        expected = ((qf(obs, batch[1]) - q_target) ** 2).mean(1).sum().item()
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    # a real next state keeps SAC's entropy term
    real_next = torch.cat([torch.randn(8, 2), torch.zeros(8, 1)], 1)
    real_batch = (obs, batch[1], batch[2], real_next, torch.zeros(8))
    without, with_entropy = (nail.soft_q_loss(qf, qf, actor, real_batch, alpha, 0.9, NO_REFERENCE)[0].item() for alpha in (0.0, 1.0))
    assert without != pytest.approx(with_entropy)
    # NAIL with pi~ = pi: the KL term log pi - log pi~ vanishes, whatever alpha (SAC's entropy bonus is replaced, not added)
    same_policy = lambda obs, actions: nail.reference_log_prob(actor, obs, actions, -1e9)
    with_reference = nail.soft_q_loss(qf, qf, actor, real_batch, 1.0, 0.9, same_policy)[0].item()
    # (float32 round trip a -> atanh -> log pi~ at this narrow pi: a little noise, far below the entropy term it replaces)
    assert abs(with_reference - without) < 0.01 * abs(with_entropy - without), (with_reference, without, with_entropy)


def test_policy_loss_ignores_absorbing_states():
    torch.manual_seed(0)
    qf = nail.SoftQEnsemble(3, 1, 16)
    actor = ToyActor()
    obs = torch.cat([torch.randn(4, 2), torch.tensor([[0.0], [0.0], [1.0], [1.0]])], 1)
    torch.manual_seed(1)
    loss, _, _, live = nail.policy_loss(actor, qf, obs, 0.5, NO_REFERENCE)
    torch.manual_seed(1)
    real_only, _, _, _ = nail.policy_loss(actor, qf, obs[:2], 0.5, NO_REFERENCE)
    assert live.tolist() == [1, 1, 0, 0]
    assert loss.item() == pytest.approx(real_only.item(), rel=1e-5)


def test_log_ratio_reward_on_a_toy_batch():
    log_ratio = torch.tensor([2.0, -1.0, 0.0, 0.5])  # log q_t/p: agent-like, expert-like, balanced, ...
    torch.testing.assert_close(nail.log_ratio_reward(log_ratio), torch.tensor([-2.0, 1.0, 0.0, -0.5]))


def test_nails_kl_term_pulls_the_actor_to_the_reference_where_sacs_entropy_widens_it():
    """With a flat critic, NAIL's actor loss alpha (log pi - log pi~) is KL(pi || pi~): minimised at pi = pi~ (the paper's
    regularised step), while plain SAC's alpha log pi only raises the entropy; the gradient reaches the actor through the
    reparameterised actions scored by the frozen pi~."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    torch.manual_seed(0)
    reference = nail.Actor(env, 32, -5.0, 2.0).requires_grad_(False)
    with torch.no_grad():  # pi~: a state-dependent mean, log std -1.5 (the middle of [-5, 2]) everywhere
        reference.fc_logstd.weight.zero_()
        reference.fc_logstd.bias.zero_()
    flat_q = lambda obs, actions: torch.zeros(1, len(obs))
    obs = torch.cat([torch.randn(256, 3), torch.zeros(256, 1)], 1)
    results = {}
    for name, log_pi_reference in (("nail", lambda o, a: nail.reference_log_prob(reference, o, a, -1e9)), ("ail", NO_REFERENCE)):
        torch.manual_seed(1)
        actor = nail.Actor(env, 32, -5.0, 2.0)
        optimizer = torch.optim.Adam(actor.parameters(), lr=3e-3)
        for _ in range(1500):
            loss, log_pi, log_ratio_to_reference, _ = nail.policy_loss(actor, flat_q, obs, 1.0, log_pi_reference)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            (mean, log_std), (reference_mean, reference_log_std) = actor(obs[:, :-1]), reference(obs[:, :-1])
        results[name] = ((mean - reference_mean).abs().mean().item(), (log_std - reference_log_std).mean().item(),
                         log_ratio_to_reference.mean().item())
    mean_gap, log_std_gap, kl = results["nail"]
    assert mean_gap < 0.05 and abs(log_std_gap) < 0.15 and kl < 0.05, results
    assert results["ail"][1] > 0.8, results  # max entropy: a std well above pi~'s, whatever pi~ is


def test_reference_log_prob_matches_the_actors_own_log_prob_and_is_clipped_off_policy():
    import gymnasium as gym

    torch.manual_seed(0)
    env = gym.make("Pendulum-v1")
    actor = nail.Actor(env, 32, -5.0, 2.0)
    obs = torch.randn(64, 3)
    with torch.no_grad():
        actions, log_pi = actor.get_action(obs)
        torch.testing.assert_close(nail.reference_log_prob(actor, obs, actions, -1e9), log_pi, rtol=1e-4, atol=1e-3)
        # a far-off action is clipped at the floor (per action dimension), not -inf
        far = torch.full((64, 1), 2.0)
        assert torch.isfinite(nail.reference_log_prob(actor, obs, far, -1e9)).all()
        assert (nail.reference_log_prob(actor, obs, far, -10.0) >= -10.0).all()


def assert_finite_run(cwd, min_rows=2):
    (run_dir,) = run_dirs(cwd)
    rows = read_eval_csv(run_dir)
    assert len(rows) >= min_rows
    for row in rows:
        assert np.isfinite([row["eval_return_mean"], row["eval_return_std"], row["normalized_score"], row["sps"]]).all(), row
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"], summary["mean_sps"]]).all()
    return rows, summary


@pytest.mark.parametrize("reward", ["nail", "ail"])
def test_smoke_reward_modes(tmp_path, reward):
    run_script("nail.py", *TINY, "--reward", reward, cwd=tmp_path)
    rows, summary = assert_finite_run(tmp_path)
    assert [row["global_step"] for row in rows] == [0, 150, 300]
    assert summary["args"]["reward"] == reward


def test_smoke_subsampled_demos_and_track_offline(tmp_path):
    run_script("nail.py", *TINY, "--subsample-frequency", "5", "--num-expert-trajectories", "2", "--track", cwd=tmp_path)
    _, summary = assert_finite_run(tmp_path)
    assert summary["args"]["subsample_frequency"] == 5
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb wrote no offline run"


@pytest.mark.skipif(not (EXPERTS / "InvertedPendulum-v4" / "demos.npz").exists(), reason="InvertedPendulum-v4 expert not shipped yet")
def test_smoke_terminating_env_fills_absorbing_states(tmp_path):
    # random InvertedPendulum episodes end in terminations after a few steps: absorbing rows in the agent's data
    run_script("nail.py", *TINY, "--env-id", "InvertedPendulum-v4", "--gradient-penalty", "1", "--subsample-frequency", "3",
               "--autotune", cwd=tmp_path)
    assert_finite_run(tmp_path)


def test_resume_restores_the_epoch_bookkeeping_and_rewinds_eval_csv_to_the_checkpoint(tmp_path):
    """350 steps (a checkpoint in the middle of the fourth epoch), then --resume to 600 in the same run folder; then the
    350-step checkpoint again (as if the process had been killed after evaluating past it) and --resume to 600 once
    more: eval.csv holds each step once, with the same values."""
    flags = [*TINY, "--checkpoint-frequency", "300"]
    path = tmp_path / "checkpoints" / "Pendulum-v1__nail__1" / "checkpoint.pt"
    run_script("nail.py", *flags, "--total-timesteps", "350", cwd=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    first = torch.load(path, weights_only=False)
    assert first["global_step"] == 350 and first["run_name"] == run_dir.name
    # three epochs of 100 steps done, 50 rows of the fourth collected by the pi~ frozen at step 300
    assert (first["num_epochs"], first["num_updates"], first["epoch_rows"], first["reference_is_uniform"]) == (3, 300, 50, False)
    assert all(torch.equal(first["reference"][key], first["actor"][key]) for key in first["actor"])  # no update since step 300
    saved = path.read_bytes()

    run_script("nail.py", *flags, "--total-timesteps", "600", "--resume", cwd=tmp_path)
    assert run_dirs(tmp_path) == [run_dir]  # the same run folder, eval.csv appended to
    rows, summary = assert_finite_run(tmp_path)
    assert [row["global_step"] for row in rows] == [0, 150, 300, 350, 450, 600]
    assert all(b["wall_time"] > a["wall_time"] for a, b in zip(rows, rows[1:]))  # the wall clock continues too
    assert summary["args"]["total_timesteps"] == 600
    last = torch.load(path, weights_only=False)
    assert last["global_step"] == 600 and len(last["commands"]) == 2 and "--resume" in last["commands"][1]
    # continued, not restarted: six epochs in all, each of 100 SAC updates and 20 discriminator steps (Adam's counts)
    assert (last["num_epochs"], last["num_updates"], last["epoch_rows"]) == (6, 600, 0)
    assert last["rb"]["pos"] == 600 and len(last["rb"]["tensors"][0]) == 600
    assert last["q_optimizer"]["state"][0]["step"] == 600 and last["discriminator_optimizer"]["state"][0]["step"] == 120
    assert not torch.equal(last["reference"]["fc1.weight"], first["reference"]["fc1.weight"])

    path.write_bytes(saved)
    (run_dir / "summary.json").unlink()
    run_script("nail.py", *flags, "--total-timesteps", "600", "--resume", cwd=tmp_path)
    again = read_eval_csv(run_dir)
    assert [row["global_step"] for row in again] == [0, 150, 300, 350, 450, 600]
    # the same checkpoint (networks, pi~, discriminator, buffer, counters, RNG states) gives the same continuation
    assert [row["eval_return_mean"] for row in again] == [row["eval_return_mean"] for row in rows]
    assert read_summary(run_dir)["final_return"] == pytest.approx(rows[-1]["eval_return_mean"])

    result = run_script("nail.py", *flags, "--discriminator-hidden-size", "16", "--total-timesteps", "900", "--resume",
                        cwd=tmp_path, check=False)
    assert_clean_error(result, "does not fit these arguments", "without --resume")
    assert read_eval_csv(run_dir) == again  # a refused resume leaves the run as it was


def test_bad_input_is_a_clean_error(tmp_path):
    assert_clean_error(run_script("nail.py", "--env-id", "NoSuchEnv-v0", cwd=tmp_path, check=False), "unknown environment id")
    assert_clean_error(run_script("nail.py", "--env-id", "CartPole-v1", cwd=tmp_path, check=False), "continuous (Box) actions")
    assert_clean_error(run_script("nail.py", *TINY, "--num-expert-trajectories", "1000", cwd=tmp_path, check=False),
                       "more trajectories than")
    assert_clean_error(run_script("nail.py", *TINY, "--expert-path", tmp_path / "nowhere", cwd=tmp_path, check=False), "no expert at")
    assert_clean_error(run_script("nail.py", *TINY, "--epoch-steps", "0", cwd=tmp_path, check=False), "--epoch-steps")
    assert_clean_error(run_script("nail.py", *TINY, "--resume", cwd=tmp_path, check=False),
                       "--resume found no checkpoint at checkpoints/Pendulum-v1__nail__1/checkpoint.pt", "without --resume")


@pytest.mark.learning
def test_nail_imitates_pendulum_from_one_demo(tmp_path):
    # tuned for speed (narrower networks, half-size epochs, fewer discriminator steps); the defaults stay DAC's / SAC's.
    # Measured (seeds 1, 2): normalized score 0.98-0.99 at step 4000, 0.99-1.07 at 5000; ~40 s of CPU time, 3.2 min of
    # wall time on a 2-core machine shared with ~6 other busy processes
    start = time.time()
    run_script("nail.py", "--env-id", "Pendulum-v1", "--num-expert-trajectories", "1", "--total-timesteps", "5000",
               "--epoch-steps", "500", "--learning-starts", "1000", "--eval-frequency", "1000", "--eval-episodes", "5",
               "--batch-size", "128", "--hidden-size", "128", "--discriminator-hidden-size", "64",
               "--discriminator-updates-per-step", "0.5", cwd=tmp_path, timeout=1200)
    rows, _ = assert_finite_run(tmp_path)
    scores = [row["normalized_score"] for row in rows]
    assert scores[0] < 0.2, scores  # it starts far from the expert ...
    assert scores[-1] >= 0.8, (scores, f"{time.time() - start:.0f}s")  # ... and ends near it, from a single demo
