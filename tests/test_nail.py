"""nail.py: the discriminator recovers a known log density ratio and learns from the epoch's rows only, the gradient
penalty of a linear logit, DAC's absorbing states (terminated vs truncated, in the agent's data, in the demos and in the
SAC target), the NAIL / AIL rewards and pi~'s log-density on toy tensors (exact where actions saturate), the KL to the
frozen pi~ in a run, both reward modes, terminated demos with subsampling and --track end to end, SIGTERM and --resume
(a compact checkpoint, a refilled buffer, the same run continued), bad input, the SAC block shared with sac.py, and
imitating Pendulum-v1 from one demo."""

import copy
import inspect
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
import types

import gymnasium as gym
import nail
import numpy as np
import pytest
import sac
import torch

from conftest import (
    EXPERTS,
    SCRIPTS,
    assert_clean_error,
    read_eval_csv,
    read_summary,
    run_dirs,
    run_script,
    run_script_recording_wandb,
)

TINY = [
    "--env-id",
    "Pendulum-v1",
    "--total-timesteps",
    "300",
    "--learning-starts",
    "100",
    "--epoch-steps",
    "100",
    "--discriminator-updates-per-step",
    "0.2",
    "--eval-frequency",
    "150",
    "--eval-episodes",
    "2",
    "--batch-size",
    "32",
    "--discriminator-batch-size",
    "32",
    "--hidden-size",
    "32",
    "--discriminator-hidden-size",
    "32",
]


def train_discriminator(sample_agent, sample_expert, dim, steps, penalty=0.0, seed=0):
    torch.manual_seed(seed)
    discriminator = nail.discriminator_network(dim, 64)
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
        free_gap, penalised_gap = (
            (free(points)[0] - free(points)[1]).item(),
            (penalised(points)[0] - penalised(points)[1]).item(),
        )
    assert free_gap > 8.0, free_gap
    assert 3.0 < penalised_gap < 5.0, penalised_gap  # |grad logit| ~ 1 along the segment between the clouds


def test_discriminator_learns_from_the_epochs_rows_only():
    """Issue 13, item 7: r~ = q_t/p is fitted to the transitions of the current pi~ (the buffer's last epoch_rows rows),
    not to the whole buffer. The 900 older rows sit on the expert's data, the epoch's 100 at (3, 0): trained on the
    epoch, the discriminator calls the expert's data expert (logit < 0) and the epoch's agent; trained on the whole
    buffer it could not tell the expert's data from the agent's."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rb = nail.ReplayBuffer(3, 1, 1000, "cpu")
    for i in range(1000):
        obs = np.append((3.0 if i >= 900 else 0.0, 0.0) + 0.1 * rng.standard_normal(2), 0.0)
        rb.add(obs, [0.0], obs)
    scale, bias = torch.ones(1), torch.zeros(1)
    expert_obs = torch.cat([0.1 * torch.randn(500, 2), torch.zeros(500, 1)], 1)
    expert_inputs = nail.discriminator_inputs(expert_obs, torch.zeros(500, 1), scale, bias)
    discriminator = nail.discriminator_network(4, 32)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    args = nail.Args(epoch_steps=100, discriminator_updates_per_step=3.0, discriminator_batch_size=64)
    stats = nail.update_discriminator(discriminator, optimizer, rb, 100, expert_inputs, torch.ones(500), scale, bias, args)
    with torch.no_grad():
        epoch_logit = discriminator(nail.discriminator_inputs(torch.tensor([[3.0, 0.0, 0.0]]), torch.zeros(1, 1), scale, bias))
        expert_logit = discriminator(expert_inputs).mean()
    assert expert_logit < -1.0 and epoch_logit > 1.0, (expert_logit, epoch_logit)
    assert stats["charts/discriminator_accuracy"] == 1.0 and torch.isfinite(stats["losses/gradient_penalty"])


def test_replay_buffer_rows_and_recent_window_across_the_wrap():
    rb = nail.ReplayBuffer(2, 1, 5, "cpu")
    for i in range(7):  # rows 5 and 6 overwrite 0 and 1
        rb.add([i, 0.0], [10.0 + i], [i + 1, 0.0])
    obs, actions, next_obs = rb.sample(200, recent=3)
    assert set(obs[:, 0].tolist()) == {4.0, 5.0, 6.0}
    torch.testing.assert_close(actions[:, 0], obs[:, 0] + 10)
    torch.testing.assert_close(next_obs[:, 0], obs[:, 0] + 1)
    assert set(rb.sample(200)[0][:, 0].tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}


def test_absorbing_rows_terminated_vs_truncated():
    obs, action, next_obs = np.array([1.0, 2.0, 3.0], dtype=np.float32), np.array([0.5], dtype=np.float32), np.full(3, 9.0)
    absorbing = np.array([0, 0, 0, 1], dtype=np.float32)
    # goes on, or truncated (a time limit, not a termination): one row, its real next state with indicator 0
    (row,) = nail.absorbing_rows(obs, action, next_obs, terminated=False)
    np.testing.assert_array_equal(row[0], [1, 2, 3, 0])
    np.testing.assert_array_equal(row[1], action)
    np.testing.assert_array_equal(row[2], [9, 9, 9, 0])
    # terminated: the next state is the absorbing state, and one self-transition (s_a, 0, s_a) follows
    first, second = nail.absorbing_rows(obs, action, next_obs, terminated=True)
    np.testing.assert_array_equal(first[0], [1, 2, 3, 0])
    np.testing.assert_array_equal(first[2], absorbing)
    np.testing.assert_array_equal(second[0], absorbing)
    np.testing.assert_array_equal(second[1], [0.0])
    np.testing.assert_array_equal(second[2], absorbing)
    # in the replay buffer, and as the discriminator sees them: the absorbing state with a zero action
    rb = nail.ReplayBuffer(4, 1, 10, "cpu")
    for row in (first, second):
        rb.add(*row)
    rows = rb.rows[:2].split((4, 1, 4), -1)
    inputs = nail.discriminator_inputs(rows[0], rows[1], torch.tensor([2.0]), torch.tensor([0.0]))
    np.testing.assert_allclose(inputs[:, -1].numpy(), [0.25, 0.0])
    np.testing.assert_array_equal(rows[2][:, -1].numpy(), [1, 1])


def write_demos(folder, lengths, terminated, obs_dim=3, action_dim=1):
    """A demos.npz of episodes of the given lengths whose last transition terminates where `terminated` says (a time
    limit truncates the others), with the shipped Pendulum-v1 expert.json; row i observes (i, ..., i)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXPERTS / "Pendulum-v1" / "expert.json", folder / "expert.json")
    n, ends = sum(lengths), np.cumsum(lengths) - 1
    terminations = np.zeros(n, dtype=bool)
    terminations[ends[np.asarray(terminated)]] = True
    truncations = np.zeros(n, dtype=bool)
    truncations[ends[~np.asarray(terminated)]] = True
    obs = np.repeat(np.arange(n, dtype=np.float32)[:, None], obs_dim, 1)
    np.savez_compressed(
        folder / "demos.npz",
        observations=obs,
        actions=np.full((n, action_dim), 0.5, dtype=np.float32),
        rewards=np.zeros(n),
        next_observations=obs + 1,
        terminations=terminations,
        truncations=truncations,
        episode_starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
    )
    return ends


def expert_data(folder, env, num_trajectories, subsample_frequency, seed):
    """What nail.py's main builds: the subsampled (s, a) pairs, plus one absorbing state per terminated demo episode."""
    _, demos = nail.load_expert(folder, env, num_trajectories, subsample_frequency, seed, ("observations", "actions"))
    _, episodes = nail.load_expert(folder, env, num_trajectories, 1, seed, ("terminations",))
    return nail.expert_transitions(demos, int(episodes["terminations"].sum()), subsample_frequency)


def test_expert_transitions_add_one_absorbing_state_per_terminated_demo_whatever_subsampling_keeps(tmp_path):
    """No shipped demo terminates, so DAC's expert absorbing states only run on synthetic demos: episodes of 10, 7 and
    12 steps, the first and last terminated, the middle one truncated."""
    ends = write_demos(tmp_path, [10, 7, 12], [True, False, True])
    env = gym.make("Pendulum-v1")
    absorbing = np.array([0, 0, 0, 1], dtype=np.float32)
    obs, actions, weights = expert_data(tmp_path, env, 3, 1, seed=0)
    assert obs.shape == (29 + 2, 4) and actions.shape == (31, 1) and weights.shape == (31,)
    np.testing.assert_array_equal(obs[:29, 0], np.arange(29))
    assert (obs[:29, -1] == 0).all() and (obs[29:] == absorbing).all() and (actions[29:] == 0).all() and (weights == 1).all()
    assert (expert_data(tmp_path, env, 2, 1, seed=0)[0][:, -1] == 1).sum() == 1  # only the first two episodes
    kept_terminal = []
    for seed in range(12):  # every 4th transition from a random offset: the terminal ones (9 and 28) are sometimes dropped
        obs, actions, weights = expert_data(tmp_path, env, 3, 4, seed=seed)
        real = obs[:, -1] == 0
        assert (obs[~real] == absorbing).all() and (~real).sum() == 2  # never subsampled away
        assert (weights[~real] == 0.25).all() and (weights[real] == 1).all() and (actions[~real] == 0).all()
        assert 6 <= real.sum() <= 8
        kept_terminal.append(np.isin(ends[[0, 2]], obs[real, 0]).sum())
    assert 0 in kept_terminal and max(kept_terminal) >= 1, kept_terminal  # both the kept and the dropped terminal path ran


class ToyActor(torch.nn.Module):
    """A fixed tanh-Gaussian over 1-D actions in [-2, 2] whose log pi is large: a visible entropy term."""

    def __init__(self):
        super().__init__()
        self.register_buffer("action_scale", torch.tensor([2.0]))
        self.register_buffer("action_bias", torch.tensor([0.0]))
        self.register_buffer("log_prob_offset", 0.5 * np.log(2 * np.pi) + torch.log(self.action_scale).sum())

    def forward(self, obs):
        return torch.zeros(len(obs), 1) + 0.3, torch.full((len(obs), 1), -3.0)

    get_action = nail.Actor.get_action


NO_REFERENCE = lambda obs, u: torch.zeros(())  # plain SAC / AIL: log pi~ = 0


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
    without, with_entropy = (
        nail.soft_q_loss(qf, qf, actor, real_batch, alpha, 0.9, NO_REFERENCE)[0].item() for alpha in (0.0, 1.0)
    )
    assert without != pytest.approx(with_entropy)
    # NAIL with pi~ = pi: the KL term log pi - log pi~ vanishes, whatever alpha (SAC's entropy bonus is replaced, not added)
    same_policy = lambda obs, u: nail.reference_log_prob(actor, obs, u, -1e9)
    losses = []
    for alpha, log_pi_reference in ((0.0, NO_REFERENCE), (1.0, same_policy)):
        torch.manual_seed(2)  # the same next actions a'
        losses.append(nail.soft_q_loss(qf, qf, actor, real_batch, alpha, 0.9, log_pi_reference)[0].item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-6), (losses, with_entropy)


def test_the_critic_target_reads_the_target_critics_the_kl_to_the_reference_and_the_absorbing_state():
    """soft_q_loss by hand, with target critics that differ from the online ones and a log pi~ that differs from log pi:
    y = r + gamma (min_k Q'_k(s', a') - alpha (log pi(a'|s') - log pi~(a'|s'))) at a real s', a' ~ pi(s'), and
    y = r + gamma min_k Q'_k(s_a, 0) where s' is DAC's absorbing state (bootstrapped, no KL term). The online critics,
    the KL term dropped, log pi~ left out of it, or a zero bootstrap at s_a each give another loss; sac_update's critic
    step computes this same loss."""
    torch.manual_seed(0)
    qf, qf_target = nail.SoftQEnsemble(3, 1, 16), nail.SoftQEnsemble(3, 1, 16)  # independently initialised
    obs = torch.cat([torch.randn(8, 2), torch.zeros(8, 1)], 1)
    next_absorbing = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    next_obs = torch.where(
        next_absorbing[:, None] > 0, torch.tensor([0.0, 0.0, 1.0]), torch.cat([torch.randn(8, 2), torch.zeros(8, 1)], 1)
    )
    batch = (obs, torch.rand(8, 1) * 4 - 2, torch.randn(8), next_obs, next_absorbing)
    actor, alpha, gamma = ToyActor(), 0.5, 0.9
    reference = lambda obs, u: -0.5 * (u - 1.0).square().sum(-1)  # a log pi~ of its own, far from pi's

    def by_hand(critic, kl_weight=1.0, reference=reference, bootstrap_absorbing=True):
        torch.manual_seed(1)  # the a' ~ pi(s') soft_q_loss draws
        with torch.no_grad():
            next_actions, next_log_pi, next_u = actor.get_action(next_obs[:, :-1])
            live = 1 - next_absorbing
            log_ratio = next_log_pi - reference(next_obs[:, :-1], next_u)
            next_value = critic(next_obs, next_actions * live[:, None]).min(0).values - kl_weight * alpha * live * log_ratio
            y = batch[2] + gamma * (next_value if bootstrap_absorbing else live * next_value)
            return ((qf(obs, batch[1]) - y) ** 2).mean(1).sum().item()

    torch.manual_seed(1)
    loss = nail.soft_q_loss(qf, qf_target, actor, batch, alpha, gamma, reference)[0].item()
    expected = by_hand(qf_target)
    assert loss == pytest.approx(expected, rel=1e-5)
    # sac_update's critic step passes its target critics and log pi~ on (lr 0; no actor step at step 1 of 2)
    log_alpha, args = torch.tensor(np.log(alpha)), nail.Args(gamma=gamma, policy_frequency=2, target_network_frequency=5)
    torch.manual_seed(1)
    stats = nail.sac_update(
        batch, actor, qf, qf_target, log_alpha, {"q": torch.optim.SGD(qf.parameters(), lr=0.0)}, args, 1, reference
    )
    assert stats["losses/qf_loss"].item() == pytest.approx(expected, rel=1e-5)
    alternatives = {
        "online critics": by_hand(qf),
        "no KL term": by_hand(qf_target, kl_weight=0.0),
        "no log pi~": by_hand(qf_target, reference=NO_REFERENCE),
        "V(s_a) = 0": by_hand(qf_target, bootstrap_absorbing=False),
    }
    for name, alternative in alternatives.items():
        assert abs(alternative - expected) > 1e-2 * expected, (name, alternative, expected)


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
        reference.fc_head.weight[1:].zero_()
        reference.fc_head.bias[1:].zero_()
    flat_q = lambda obs, actions: torch.zeros(1, len(obs))
    obs = torch.cat([torch.randn(256, 3), torch.zeros(256, 1)], 1)
    results = {}
    nail_reference = lambda obs, u: nail.reference_log_prob(reference, obs, u, -1e9)
    for name, log_pi_reference in (("nail", nail_reference), ("ail", NO_REFERENCE)):
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
        results[name] = (
            (mean - reference_mean).abs().mean().item(),
            (log_std - reference_log_std).mean().item(),
            log_ratio_to_reference.mean().item(),
        )
    mean_gap, log_std_gap, kl = results["nail"]
    assert mean_gap < 0.05 and abs(log_std_gap) < 0.15 and kl < 0.05, results
    assert results["ail"][1] > 0.8, results  # max entropy: a std well above pi~'s, whatever pi~ is


def test_reference_log_prob_matches_the_actors_own_log_prob_and_is_clipped_off_policy():
    torch.manual_seed(0)
    env = gym.make("Pendulum-v1")
    actor = nail.Actor(env, 32, -5.0, 2.0)
    obs = torch.randn(64, 3)
    with torch.no_grad():
        actions, log_pi, u = actor.get_action(obs)
        torch.testing.assert_close(nail.reference_log_prob(actor, obs, u, -1e9), log_pi, rtol=1e-5, atol=1e-5)
        # a far-off pre-tanh value (an action deep in pi~'s tail) is clipped at the floor per action dimension, not -inf
        far = torch.full((64, 1), 30.0)
        assert (nail.reference_log_prob(actor, obs, far, -1e9) < -100).all()
        assert (nail.reference_log_prob(actor, obs, far, -10.0) == -10.0).all()


def saturated_actor(mean, log_std, obs_dim=11, action_dim=3):
    """A Hopper-sized tanh-Gaussian actor with the same pre-tanh mean and log-std in every state."""
    env = types.SimpleNamespace(
        observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,)), action_space=gym.spaces.Box(-1, 1, (action_dim,))
    )
    torch.manual_seed(0)
    actor = nail.Actor(env, 64, -5.0, 2.0)
    raw_log_std = np.arctanh((log_std - actor.log_std_min) / (0.5 * (actor.log_std_max - actor.log_std_min)) - 1)
    with torch.no_grad():
        actor.fc_head.weight.zero_()
        actor.fc_head.bias.copy_(torch.tensor([mean] * action_dim + [raw_log_std] * action_dim))
    return actor


def test_kl_to_the_reference_is_exact_where_actions_saturate():
    """Issue 13, item 5. pi~ = pi (true KL 0) with pre-tanh mean 8 and log-std -1: nearly every action lies within 1e-6
    of the bound, where a float32 action cannot return its pre-tanh value (atanh capped it near 7.25: a spurious 9.4 nats
    and a gradient of ~2 per unit of mean). Scored at the actor's own u, the KL term is 0 per sample and its gradient
    is the score function's, mean zero (Monte Carlo noise only)."""
    actor = saturated_actor(8.0, -1.0)
    reference = copy.deepcopy(actor).requires_grad_(False)
    obs = torch.randn(16384, 11)
    actions, log_pi, u = actor.get_action(obs)
    assert (1 - actions.abs() < 1e-6).float().mean() > 0.9
    assert actor(obs[:1])[1].detach().numpy() == pytest.approx(-1.0, abs=1e-6)
    log_ratio_to_reference = log_pi - nail.reference_log_prob(reference, obs, u, -10.0)
    assert log_ratio_to_reference.abs().max() < 1e-4, log_ratio_to_reference.abs().max()
    log_ratio_to_reference.mean().backward()
    # d/d(mean) averages eps / std, d/d(log-std) (eps^2 - 1) times the squashing's slope 3.4: std 0.02 and 0.04 here
    assert actor.fc_head.bias.grad.abs().max() < 0.25, actor.fc_head.bias.grad


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


def test_smoke_terminated_subsampled_demos_and_track_offline(tmp_path):
    # the shipped Pendulum-v1 demos with their first two episodes cut short by a termination: expert absorbing states
    expert = tmp_path / "expert"
    expert.mkdir()
    shutil.copy(EXPERTS / "Pendulum-v1" / "expert.json", expert / "expert.json")
    demos = dict(np.load(EXPERTS / "Pendulum-v1" / "demos.npz"))
    for end in (99, 349):
        demos["terminations"][end], demos["truncations"][end] = True, False
    keep = np.r_[0:100, 200:350, 400 : len(demos["rewards"])]
    demos = {key: value[keep] for key, value in demos.items() if key != "episode_starts"}
    starts = np.flatnonzero(np.r_[True, (demos["terminations"] | demos["truncations"])[:-1]])
    np.savez_compressed(expert / "demos.npz", **demos, episode_starts=starts)
    assert (expert_data(expert, gym.make("Pendulum-v1"), 2, 5, 1)[0][:, -1] == 1).sum() == 2
    run_script(
        "nail.py",
        *TINY,
        "--expert-path",
        expert,
        "--subsample-frequency",
        "5",
        "--num-expert-trajectories",
        "2",
        "--track",
        cwd=tmp_path,
    )
    _, summary = assert_finite_run(tmp_path)
    assert summary["args"]["subsample_frequency"] == 5
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb wrote no offline run"


def test_actor_steps_are_scored_against_the_frozen_reference(tmp_path, monkeypatch):
    """Issue 13, item 7: log pi~ comes from the copy of the actor frozen at the epoch's start. An epoch's 100 updates
    move the actor (a light KL weight and a fast actor here), so the KL to pi~ that its last updates log is well above
    0; scored with the live actor instead, log pi~ = log pi sample by sample and the KL term would be a no-op (0)."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # leave pytest's own SIGINT handler in place
    logged = run_script_recording_wandb(
        "nail.py", *TINY, "--alpha", "0.1", "--policy-lr", "3e-3", "--batch-size", "128", cwd=tmp_path, monkeypatch=monkeypatch
    )
    kl = {row["_step"]: row["charts/kl_to_reference"] for row in logged if "charts/kl_to_reference" in row}
    assert sorted(kl) == [100, 200, 300], kl  # the first against the warm-up's uniform pi~, then against the actor's copies
    # measured 0.13-0.40 at step 200 and 0.08-0.15 at 300 (seeds 1-4), each a 128-sample estimate
    assert (kl[200] + kl[300]) / 2 > 0.05, kl


@pytest.mark.skipif(
    not (EXPERTS / "InvertedPendulum-v4" / "demos.npz").exists(), reason="InvertedPendulum-v4 expert not shipped yet"
)
def test_smoke_terminating_env_fills_absorbing_states(tmp_path):
    # random InvertedPendulum episodes end in terminations after a few steps: absorbing rows in the agent's data
    run_script(
        "nail.py",
        *TINY,
        "--env-id",
        "InvertedPendulum-v4",
        "--gradient-penalty",
        "1",
        "--subsample-frequency",
        "3",
        "--autotune",
        cwd=tmp_path,
    )
    assert_finite_run(tmp_path)


def test_main_rewards_minus_the_log_ratio_and_passes_the_absorbing_indicator(tmp_path, monkeypatch):
    """The last minibatch main fed sac_update (the script's globals after a short InvertedPendulum-v4 run, whose random
    episodes terminate): its rewards are r = -log r~ of the epoch's discriminator at (s, a), and its last column says
    which next states are DAC's absorbing state, for soft_q_loss's bootstrap. Main assembles this batch itself, so
    only a run shows it."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # leave pytest's own SIGINT handler in place
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "nail.py"), *TINY, "--env-id", "InvertedPendulum-v4"])
    script = runpy.run_path(str(SCRIPTS / "nail.py"), run_name="__main__")
    obs, actions, rewards, next_obs, next_absorbing = script["batch"]
    with torch.no_grad():
        log_ratio = script["discriminator"](nail.discriminator_inputs(obs, actions, script["scale"], script["bias"]))
    torch.testing.assert_close(rewards, -log_ratio)
    assert torch.equal(next_absorbing, next_obs[:, -1]) and next_absorbing.sum() > 0


def test_sigterm_checkpoints_and_resume_continues_the_same_run(tmp_path):
    """A session's end or a cluster's preemption (SIGTERM) mid-run: the step finishes, a compact checkpoint is written
    (networks, optimisers, pi~, discriminator, epoch counters; no replay buffer), the exit status is 128 + 15 and one line
    names --resume. A fresh run then refuses to start over it; --resume refills the buffer with pi~, continues the same
    run folder (eval.csv rewound to the checkpoint's rows) and deletes the checkpoint when it finishes; the same
    checkpoint resumed twice gives the same evaluations; one resumed with other network sizes is refused."""
    command = [sys.executable, str(SCRIPTS / "nail.py"), *TINY, "--total-timesteps", "1000000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:  # past the evaluation at step 150: into the second epoch
            if len(list((tmp_path / "runs").glob("*/eval.csv"))) and len(read_eval_csv(run_dirs(tmp_path)[0])) >= 2:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped at step" in stderr and "--resume" in stderr, stderr[-2000:]
    path = tmp_path / "checkpoints" / "Pendulum-v1__nail__1.pt"
    checkpoint = torch.load(path, weights_only=False)
    progress, state = checkpoint["progress"], checkpoint["state"]
    stopped_at = progress["global_step"]
    (run_dir,) = run_dirs(tmp_path)
    assert 150 <= stopped_at < 1_000_000 and progress["run_name"] == run_dir.name
    # epochs of 100 steps from learning_starts 100, each 100 SAC updates and 20 discriminator steps (Adam's counts);
    # Pendulum never terminates, so the current epoch's replay rows are its steps
    num_epochs = stopped_at // 100
    assert (progress["num_epochs"], progress["sac_steps"], progress["epoch_rows"]) == (
        num_epochs,
        100 * num_epochs,
        stopped_at % 100,
    )
    assert state["q_optimizer"]["state"][0]["step"] == 100 * num_epochs
    assert state["discriminator_optimizer"]["state"][0]["step"] == 20 * num_epochs
    assert all(torch.equal(state["reference"][key], state["actor"][key]) for key in state["actor"])  # pi~ = the epoch's actor
    assert "rb" not in state and progress["refill_env_steps"] == 0 and path.stat().st_size < 200_000
    saved = path.read_bytes()

    result = run_script("nail.py", *TINY, cwd=tmp_path, check=False)
    assert_clean_error(result, "holds an interrupted run's checkpoint", "--resume")
    total = stopped_at + 200
    resume = ["nail.py", *TINY, "--total-timesteps", total, "--refill-steps", "150", "--resume"]
    run_script(*resume, cwd=tmp_path)
    assert run_dirs(tmp_path) == [run_dir] and not path.exists()  # the same run folder; finished: no checkpoint left
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == sorted({*range(0, total + 1, 150), total})  # each step once
    assert all(b["wall_time"] > a["wall_time"] for a, b in zip(rows, rows[1:]))  # the wall clock continues too
    summary = read_summary(run_dir)
    assert summary["args"]["total_timesteps"] == total and summary["refill_env_steps"] == 150

    path.write_bytes(saved)
    run_script(*resume, cwd=tmp_path)
    again = read_eval_csv(run_dir)
    # the same checkpoint (networks, pi~, discriminator, counters, RNG states) refills and continues the same way
    assert [row["eval_return_mean"] for row in again] == [row["eval_return_mean"] for row in rows]

    path.write_bytes(saved)
    result = run_script(*resume, "--discriminator-hidden-size", "16", cwd=tmp_path, check=False)
    assert_clean_error(result, "does not fit these arguments")
    assert read_eval_csv(run_dir) == again  # a refused resume leaves the run as it was


def test_bad_input_is_a_clean_error(tmp_path):
    assert_clean_error(run_script("nail.py", "--env-id", "NoSuchEnv-v0", cwd=tmp_path, check=False), "unknown environment id")
    assert_clean_error(run_script("nail.py", "--env-id", "CartPole-v1", cwd=tmp_path, check=False), "continuous (Box) actions")
    assert_clean_error(
        run_script("nail.py", *TINY, "--num-expert-trajectories", "1000", cwd=tmp_path, check=False),
        "--num-expert-trajectories 1000 is not between 1 and its",
    )
    assert_clean_error(
        run_script("nail.py", *TINY, "--expert-path", tmp_path / "nowhere", cwd=tmp_path, check=False),
        "is not a usable expert folder",
        "demos.py --check",
    )
    assert_clean_error(run_script("nail.py", *TINY, "--epoch-steps", "0", cwd=tmp_path, check=False), "--epoch-steps")
    assert_clean_error(run_script("nail.py", *TINY, "--subsample-frequency", "0", cwd=tmp_path, check=False), "--subsample")
    assert_clean_error(
        run_script("nail.py", *TINY, "--total-timesteps", "100", cwd=tmp_path, check=False), "--learning-starts 100"
    )
    assert_clean_error(
        run_script("nail.py", *TINY, "--resume", cwd=tmp_path, check=False),
        "--resume found no checkpoint at checkpoints/Pendulum-v1__nail__1.pt",
        "without --resume",
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()


SHARED_WITH_SAC = ["SoftQEnsemble", "bf16_is_fast", "make_optimizer", "save_checkpoint", "load_checkpoint"]


@pytest.mark.parametrize(
    "name", [*SHARED_WITH_SAC, "make_env", "evaluate", "normalized_score", "write_eval_row", "write_summary"]
)
def test_sac_block_and_plumbing_are_sac_pys(name):
    """The copies stay identical to sac.py's (docs/DESIGN.md); Actor differs only by returning its pre-tanh sample."""
    assert inspect.getsource(getattr(nail, name)) == inspect.getsource(getattr(sac, name))


def test_actor_is_sac_pys_plus_its_pre_tanh_sample():
    expected = (
        inspect.getsource(sac.Actor)
        .replace('log pi(a|s) by Eq. 21."""', 'log pi(a|s) by Eq. 21; u."""')
        .replace("log_prob.sum(-1) - self.log_prob_offset\n", "log_prob.sum(-1) - self.log_prob_offset, u\n")
    )
    assert inspect.getsource(nail.Actor) == expected


@pytest.mark.learning
def test_nail_imitates_pendulum_from_one_demo(tmp_path):
    # tuned for speed (narrower networks, half-size epochs, fewer discriminator steps); the defaults stay DAC's / SAC's.
    # Measured (seeds 1, 2): normalized score 0.98-0.99 at step 4000, 0.99-1.07 at 5000; ~40 s of CPU time, 3.2 min of
    # wall time on a 2-core machine shared with ~6 other busy processes
    start = time.time()
    run_script(
        "nail.py",
        "--env-id",
        "Pendulum-v1",
        "--num-expert-trajectories",
        "1",
        "--total-timesteps",
        "5000",
        "--epoch-steps",
        "500",
        "--learning-starts",
        "1000",
        "--eval-frequency",
        "1000",
        "--eval-episodes",
        "5",
        "--batch-size",
        "128",
        "--hidden-size",
        "128",
        "--discriminator-hidden-size",
        "64",
        "--discriminator-updates-per-step",
        "0.5",
        cwd=tmp_path,
        timeout=1200,
    )
    rows, _ = assert_finite_run(tmp_path)
    scores = [row["normalized_score"] for row in rows]
    assert scores[0] < 0.2, scores  # it starts far from the expert ...
    assert scores[-1] >= 0.8, (scores, f"{time.time() - start:.0f}s")  # ... and ends near it, from a single demo
