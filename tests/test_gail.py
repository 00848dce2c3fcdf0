"""gail.py: TRPO's pieces on toy problems (conjugate gradient, the Fisher-vector product, a step that keeps its KL
bound and improves the surrogate), GAE under termination, truncation and next-step autoreset, the discriminator's
loss, penalty, inputs, rewards and update step, every flag path end to end, bad input, and learning CartPole-v1 from the
shipped demos."""

import copy
import math
import shutil

import gail
import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import EXPERTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script, run_script_recording_wandb


def test_conjugate_gradient_solves_a_small_spd_system():
    torch.manual_seed(0)
    m = torch.randn(6, 6, dtype=torch.float64)
    a, b = m @ m.T + 0.1 * torch.eye(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    x = gail.conjugate_gradient(lambda v: a @ v, b, iterations=20)
    torch.testing.assert_close(x, torch.linalg.solve(a, b))
    # CG from x = 0 on b = 0 (a zero policy gradient) stays at 0 instead of dividing 0 by 0
    assert torch.equal(
        gail.conjugate_gradient(lambda v: a @ v, torch.zeros(6, dtype=torch.float64), 10), torch.zeros(6, dtype=torch.float64)
    )


def flat_grad(output, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(output, params, retain_graph=True)])


def test_fisher_vector_product_is_the_fisher_information_matrix():
    """F = E_s E_{a~pi}[g g^T], g = grad log pi(a|s), built explicitly: a sum over actions (categorical), and the
    closed form J_mu^T Sigma^-1 J_mu on the mean's parameters, 2 I on the log-stds, 0 across (Gaussian)."""
    torch.manual_seed(0)
    obs, damping = torch.randn(5, 3), 0.1
    policy = gail.Policy(3, gym.spaces.Discrete(3), hidden_size=4)
    params = list(policy.parameters())
    fisher = 0
    for s in obs:
        log_probs = torch.log_softmax(policy(s[None])[0], -1)
        for a in range(3):
            g = flat_grad(log_probs[a], params)
            fisher = fisher + log_probs[a].exp().detach() * torch.outer(g, g) / len(obs)
    v = torch.randn(len(fisher))
    torch.testing.assert_close(
        gail.fisher_vector_product(policy, obs, v, damping), fisher @ v + damping * v, rtol=1e-4, atol=1e-6
    )

    policy = gail.Policy(3, gym.spaces.Box(-1, 1, (2,)), hidden_size=4)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([0.3, -0.5]))
    assert next(policy.parameters()) is policy.log_std  # a module's own parameters come before its children's
    network_params = list(policy.network.parameters())
    n = sum(p.numel() for p in network_params)
    fisher = torch.zeros(2 + n, 2 + n)
    fisher[:2, :2] = 2 * torch.eye(2)
    for s in obs:
        mean = policy(s[None])[0, :2]
        jacobian = torch.stack([flat_grad(mean[d], network_params) for d in range(2)])  # [2, n]
        fisher[2:, 2:] += jacobian.T @ torch.diag(torch.exp(-2 * policy.log_std.detach())) @ jacobian / len(obs)
    v = torch.randn(2 + n)
    torch.testing.assert_close(
        gail.fisher_vector_product(policy, obs, v, damping), fisher @ v + damping * v, rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.Box(-2, 2, (2,))], ids=["discrete", "continuous"])
@pytest.mark.parametrize("max_kl", [0.01, 0.001])
def test_trpo_step_keeps_its_kl_bound_and_improves_the_surrogate(space, max_kl):
    torch.manual_seed(0)
    policy = gail.Policy(4, space, hidden_size=16)
    obs = torch.randn(1024, 4)
    with torch.no_grad():
        actions = policy.distribution(policy(obs)).sample()
    # an advantage that prefers one action (discrete) or a positive first coordinate (continuous), depending on s
    sign = torch.sign(obs[:, 0])
    advantages = sign * ((actions == 1).float() - 0.3) if isinstance(space, gym.spaces.Discrete) else sign * actions[:, 0]
    old = copy.deepcopy(policy)
    with torch.no_grad():
        old_dist, old_log_prob = old.distribution(old(obs)), old.distribution(old(obs)).log_prob(actions)
    args = gail.Args(max_kl=max_kl, cg_damping=0.1, cg_iterations=10, backtrack_iterations=10, fisher_subsample=1)
    stats = gail.trpo_step(policy, obs, actions, advantages, args)
    with torch.no_grad():
        new_dist = policy.distribution(policy(obs))
        kl = torch.distributions.kl_divergence(old_dist, new_dist).mean()
        surrogate = (torch.exp(new_dist.log_prob(actions) - old_log_prob) * advantages).mean()
    # measured independently of the line search: a real step inside the trust region that raised the surrogate
    assert 0 < kl <= max_kl * (1 + 1e-5), (kl, stats)
    assert surrogate > advantages.mean() + 1e-4, (surrogate, advantages.mean())
    assert stats["kl"].item() == pytest.approx(kl.item(), rel=1e-4)
    assert stats["surrogate_improvement"].item() == pytest.approx((surrogate - advantages.mean()).item(), rel=1e-3, abs=1e-6)
    assert stats["backtracks"].item() < 10


def test_trpo_step_without_a_gradient_leaves_the_policy_unchanged():
    torch.manual_seed(0)
    policy = gail.Policy(4, gym.spaces.Discrete(2), hidden_size=8)
    before = [p.detach().clone() for p in policy.parameters()]
    obs = torch.randn(64, 4)
    stats = gail.trpo_step(policy, obs, torch.zeros(64, dtype=torch.long), torch.zeros(64), gail.Args(fisher_subsample=1))
    assert all(torch.equal(b, p) for b, p in zip(before, policy.parameters()))
    assert stats["kl"].item() == 0 and stats["backtracks"].item() == 10


def reference_gae(rewards, values, next_values, terminations, dones, valid, gamma, lam):
    """Per env, per valid step: A_t = sum_l (gamma lam)^l delta_{t+l} over the rest of its episode inside the rollout."""
    advantages = np.zeros_like(rewards)
    steps, envs = rewards.shape
    for e in range(envs):
        for t in range(steps):
            if not valid[t, e]:
                continue
            total, k = 0.0, t
            while k < steps:
                delta = rewards[k, e] + gamma * (1 - terminations[k, e]) * next_values[k, e] - values[k, e]
                total += (gamma * lam) ** (k - t) * delta
                if dones[k, e]:
                    break
                k += 1
            advantages[t, e] = total
    return advantages


def test_gae_bootstraps_truncations_not_terminations_and_skips_autoreset_steps():
    gamma, lam = 0.9, 0.8
    rng = np.random.default_rng(0)
    rewards, values, next_values = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    terminations, truncations, valid = np.zeros((7, 3)), np.zeros((7, 3)), np.ones((7, 3), dtype=bool)
    terminations[2, 0] = 1  # env 0 terminates at t = 2: t = 3 is gymnasium's autoreset step, a new episode from t = 4
    truncations[1, 1] = 1  # env 1 hits its time limit at t = 1: t = 2 is the autoreset step
    truncations[6, 2] = 1  # env 2 is truncated on the rollout's last step
    valid[3, 0] = valid[2, 1] = False
    rewards[~valid] = 0.0  # what gail.py stores for autoreset steps
    dones = np.maximum(terminations, truncations)
    t = lambda x: torch.as_tensor(x, dtype=torch.float64)
    advantages = gail.gae(t(rewards), t(values), t(next_values), t(terminations), t(dones), gamma, lam).numpy()
    expected = reference_gae(rewards, values, next_values, terminations, dones, valid, gamma, lam)
    np.testing.assert_allclose(advantages[valid], expected[valid])
    # by hand: a terminal step has no bootstrap, a truncated one bootstraps from V(s'), the rollout's end from V(s_T)
    assert advantages[2, 0] == pytest.approx(rewards[2, 0] - values[2, 0])
    assert advantages[1, 1] == pytest.approx(rewards[1, 1] + gamma * next_values[1, 1] - values[1, 1])
    assert advantages[6, 0] == pytest.approx(rewards[6, 0] + gamma * next_values[6, 0] - values[6, 0])
    delta_5 = rewards[5, 0] + gamma * next_values[5, 0] - values[5, 0]
    assert advantages[5, 0] == pytest.approx(delta_5 + gamma * lam * advantages[6, 0])


def test_discriminator_loss_rewards_and_penalty():
    torch.manual_seed(0)
    # D = P(expert): logits 0 are chance, log 2 per side, and the maximal Bernoulli entropy log 2 (mean over both sides)
    zeros = torch.zeros(8)
    assert gail.discriminator_loss(zeros, zeros, 0.0).item() == pytest.approx(2 * math.log(2))
    assert gail.discriminator_loss(zeros, zeros, 0.1).item() == pytest.approx(2 * math.log(2) - 0.1 * math.log(2))
    assert gail.discriminator_loss(torch.full((8,), 20.0), torch.full((8,), -20.0), 0.0).item() < 1e-8
    expert_logits, agent_logits = torch.randn(16, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    p_e, p_a = torch.sigmoid(expert_logits), torch.sigmoid(agent_logits)
    entropy = lambda p: -(p * p.log() + (1 - p) * (1 - p).log()).mean()
    # the entropy is the mean over all logits: with unequal sides it weights each logit, not each side, equally
    expected = -p_e.log().mean() - (1 - p_a).log().mean() - 0.01 * entropy(torch.cat([p_e, p_a]))
    torch.testing.assert_close(gail.discriminator_loss(expert_logits, agent_logits, 0.01), expected)

    logits = torch.linspace(-30, 30, 101, dtype=torch.float64)
    d = torch.sigmoid(logits)
    survival, cost = gail.learned_reward(logits, "neg_log_one_minus_d"), gail.learned_reward(logits, "log_d")
    torch.testing.assert_close(survival[40:61], -torch.log(1 - d[40:61]))  # away from where 1 - D rounds to 0
    torch.testing.assert_close(cost[40:61], torch.log(d[40:61]))
    assert (survival >= 0).all() and (cost <= 0).all() and torch.isfinite(torch.cat([survival, cost])).all()
    assert (survival.diff() > 0).all() and (cost.diff() > 0).all()  # both grow as D says "expert"

    # a linear logit w.x + b has gradient w everywhere: the penalty is (||w|| - 1)^2, with gradient 2 (||w|| - 1) w / ||w||
    linear = torch.nn.Linear(5, 1)
    penalty = gail.gradient_penalty(lambda x: linear(x).squeeze(-1), torch.randn(32, 5), torch.randn(32, 5))
    norm = linear.weight.norm()
    assert penalty.item() == pytest.approx((norm.item() - 1) ** 2, rel=1e-5)
    penalty.backward()
    torch.testing.assert_close(linear.weight.grad, (2 * (norm - 1) * linear.weight / norm).detach())


@pytest.mark.parametrize("gp_coef", [0.0, 10.0])
def test_update_discriminator_labels_expert_one_and_agent_zero(gp_coef):
    """Expert inputs around +2, agent inputs around -2: D(expert) -> 1 and D(agent) -> 0 (a swap of the labels fails),
    in disc_epochs x disc_num_minibatches Adam steps, each minibatch against as many expert inputs."""
    torch.manual_seed(0)
    expert_inputs, agent_inputs = torch.randn(64, 3) + 2, torch.randn(96, 3) - 2
    discriminator = gail.mlp(3, 1, 16, out_std=0.01)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-2)
    args = gail.Args(disc_epochs=25, disc_num_minibatches=4, gp_coef=gp_coef)
    loss, penalty = gail.update_discriminator(discriminator, optimizer, expert_inputs, agent_inputs, args)
    assert all(state["step"].item() == 25 * 4 for state in optimizer.state.values())
    with torch.no_grad():
        assert (discriminator(expert_inputs) > 0).all() and (discriminator(agent_inputs) < 0).all()
    assert loss.item() < 0.5 * math.log(2) and not loss.requires_grad
    assert (penalty.item() > 0) == (gp_coef > 0)


def test_discriminator_sees_one_hot_or_rescaled_clipped_actions():
    obs = torch.randn(3, 2)
    inputs = gail.discriminator_inputs({"observations": obs, "actions": torch.tensor([2, 0, 1])}, gym.spaces.Discrete(3))
    torch.testing.assert_close(inputs, torch.cat([obs, torch.eye(3)[[2, 0, 1]]], -1))
    space = gym.spaces.Box(np.array([-2.0, 0.0], dtype=np.float32), np.array([2.0, 1.0], dtype=np.float32))
    inputs = gail.discriminator_inputs(
        {"observations": obs, "actions": torch.tensor([[1.0, 0.5], [-5.0, 1.0], [2.0, 3.0]])}, space
    )
    torch.testing.assert_close(inputs[:, 2:], torch.tensor([[0.5, 0.0], [-1.0, 1.0], [1.0, 1.0]]))
    assert gail.value_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)


COMMON = [
    "--total-timesteps",
    600,
    "--num-envs",
    2,
    "--num-steps",
    100,
    "--eval-frequency",
    200,
    "--eval-episodes",
    2,
    "--num-expert-trajectories",
    2,
]
SMOKE = {
    "discrete": ["--env-id", "CartPole-v1"],
    "discrete-logd-gp-subsample-track": [
        "--env-id",
        "CartPole-v1",
        "--reward-type",
        "log_d",
        "--gp-coef",
        10,
        "--subsample-frequency",
        4,
        "--track",
    ],
    "continuous-gp": ["--env-id", "Pendulum-v1", "--gp-coef", 10],
    "continuous-logd-subsample-track": [
        "--env-id",
        "Pendulum-v1",
        "--reward-type",
        "log_d",
        "--subsample-frequency",
        5,
        "--track",
        "--no-normalize-observations",
    ],
    "continuous-video": ["--env-id", "Pendulum-v1", "--capture-video"],
}


@pytest.mark.parametrize("flags", SMOKE.values(), ids=SMOKE.keys())
def test_smoke(workdir, flags):
    run_script("gail.py", *flags, *COMMON, cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    steps = [row["global_step"] for row in rows]
    # the budget is an upper bound: 3 iterations of 2 x 100 env steps, less the autoreset steps
    assert steps[0] == 0 and 400 <= steps[-1] <= 600 and len(rows) >= 3 and (np.diff(steps) > 0).all(), steps
    assert all(np.isfinite(list(row.values())).all() for row in rows), rows
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"], summary["mean_sps"]]).all(), summary
    assert summary["args"]["subsample_frequency"] == (
        flags[flags.index("--subsample-frequency") + 1] if "--subsample-frequency" in flags else 1
    )
    assert summary["args"]["reward_type"] == ("log_d" if "log_d" in flags else "neg_log_one_minus_d")
    assert summary["args"]["gp_coef"] == (10 if "--gp-coef" in flags else 0)
    if "--track" in flags:
        # the run ends with status 0 only if every logged statistic (KL, D accuracies, reward, losses) was finite
        assert list((workdir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    if "--capture-video" in flags:
        assert list((workdir / "videos").rglob("*.mp4")), "no evaluation video recorded"


def test_bad_input_is_one_clear_sentence(workdir):
    result = run_script("gail.py", "--env-id", "Acrobot-v1", "--expert-path", workdir / "nowhere", cwd=workdir, check=False)
    assert_clean_error(result, "is not a usable expert folder", f"python cleanil/demos.py --check {workdir / 'nowhere'}")
    result = run_script("gail.py", "--num-expert-trajectories", 100_000, cwd=workdir, check=False)
    assert_clean_error(result, "--num-expert-trajectories 100000 is not between 1 and its")
    result = run_script("gail.py", "--subsample-frequency", 0, cwd=workdir, check=False)
    assert_clean_error(result, "--subsample-frequency must be positive")
    result = run_script("gail.py", "--num-envs", 0, cwd=workdir, check=False)
    assert_clean_error(result, "--num-envs must be positive")


def test_demos_with_invalid_actions_are_refused(workdir):
    # the counterpart of test_gaifo's NaN-action test: GAIL reads expert actions, so garbage there must be caught
    expert_dir = workdir / "expert"
    shutil.copytree(EXPERTS / "CartPole-v1", expert_dir)
    with np.load(expert_dir / "demos.npz") as npz:
        demos = {key: npz[key] for key in npz.files}
    np.savez_compressed(
        expert_dir / "demos.npz", **{**demos, "actions": np.full(demos["actions"].shape, np.nan, dtype=np.float32)}
    )
    result = run_script("gail.py", "--expert-path", expert_dir, *COMMON, cwd=workdir, check=False)
    assert_clean_error(result, "its actions are not finite", f"python cleanil/demos.py --check {expert_dir}")
    assert not (workdir / "runs").exists()


@pytest.mark.learning
def test_gail_cartpole_reaches_expert_return(workdir):
    run_script("gail.py", "--env-id", "CartPole-v1", "--total-timesteps", 80_000, "--eval-frequency", 10_000, cwd=workdir)
    rows = read_eval_csv(run_dirs(workdir)[0])
    returns = [row["eval_return_mean"] for row in rows]
    assert max(returns) >= 475 and returns[-1] >= 475, returns


@pytest.mark.parametrize("script", ["gail.py", "gaifo.py"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_logs_discriminator_accuracy_reward_and_kl(workdir, monkeypatch, script, env_id):
    logged = run_script_recording_wandb(
        script, "--env-id", env_id, *COMMON, "--max-kl", 0.005, cwd=workdir, monkeypatch=monkeypatch
    )
    iterations = [log for log in logged if "charts/kl" in log]
    assert len(iterations) >= 3, logged  # >= 600 steps from 2 envs x 100 steps per iteration, less autoreset steps
    for log in iterations:
        assert 0 <= log["charts/disc_accuracy_expert"] <= 1 and 0 <= log["charts/disc_accuracy_agent"] <= 1, log
        assert 0 <= log["charts/kl"] <= 0.005 * (1 + 1e-5), log
        assert math.isfinite(log["charts/learned_reward"]) and math.isfinite(log["losses/discriminator_loss"]), log
    # -log(1 - D) >= 0, the default reward
    assert all(log["charts/learned_reward"] >= 0 for log in iterations), iterations
    # the discriminator learns to tell the random agent from the expert within three iterations
    assert iterations[-1]["charts/disc_accuracy_expert"] + iterations[-1]["charts/disc_accuracy_agent"] > 1, iterations
