"""airl.py: the discriminator's pieces by hand (Eq. 4's f with absorbing terminations, the logit f - log pi, the
logistic loss, the reward log D - log(1 - D)), their wiring (log pi from the current policy, detached), the
disentanglement of Thm C.1 on a tabular MDP, the TRPO block shared with gail.py, every flag path end to end, bad
input, and imitating Pendulum-v1 from the shipped demos."""

import ast
import math
import runpy
import shutil
import sys

import airl
import gymnasium as gym
import numpy as np
import pytest
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


def test_f_logits_loss_and_reward_by_hand():
    g, h, h_next = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 0.7, -0.2]), torch.tensor([1.5, -0.4, 0.9])
    terminations, gamma = torch.tensor([0.0, 1.0, 0.0]), 0.9
    f = airl.shaped_reward_f(g, h, h_next, terminations, gamma)
    # Eq. 4, and h(s') = 0 after a termination (the second transition): g - h(s) there
    torch.testing.assert_close(f, torch.tensor([0.5 + 0.9 * 1.5 - 0.3, -1.0 - 0.7, 2.0 + 0.9 * 0.9 + 0.2]))

    torch.manual_seed(0)
    f, log_pi = torch.randn(6, dtype=torch.float64), -torch.rand(6, dtype=torch.float64) * 3
    d = f.exp() / (f.exp() + log_pi.exp())  # D(s, a, s') = exp f / (exp f + pi(a|s))
    logits = airl.airl_logits(f, log_pi)
    torch.testing.assert_close(torch.sigmoid(logits), d)
    torch.testing.assert_close(airl.learned_reward(logits, log_pi, 1.0), d.log() - (1 - d).log())
    torch.testing.assert_close(airl.learned_reward(logits, log_pi, 1.0), f - log_pi)
    torch.testing.assert_close(airl.learned_reward(logits, log_pi, 0.1), f - 0.1 * log_pi)

    # expert label 1, agent label 0, each side averaged on its own (unequal sizes and values tell a swap apart)
    expert_d, agent_d = d[:2], d[2:]
    expected = -expert_d.log().mean() - (1 - agent_d).log().mean()
    torch.testing.assert_close(airl.discriminator_loss(logits[:2], logits[2:]), expected)
    assert airl.discriminator_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(2 * math.log(2))


def test_discriminator_wiring_and_detached_log_pi():
    torch.manual_seed(0)
    obs, next_obs = torch.randn(5, 3), torch.randn(5, 3)
    space = gym.spaces.Box(np.array([-2.0], dtype=np.float32), np.array([2.0], dtype=np.float32))
    actions = torch.tensor([[1.0], [-4.0], [3.0], [0.0], [2.0]])
    terminations = torch.tensor([0.0, 0, 1, 0, 0])
    samples = {"observations": obs, "next_observations": next_obs, "actions": actions, "terminations": terminations}
    # g(s, a): s next to the raw sample rescaled (bounds -> [-1, 1]), not clipped; g(s) under --state-only
    inputs = airl.reward_inputs(samples, space, state_only=False)
    torch.testing.assert_close(inputs, torch.cat([obs, actions / 2], -1))
    assert torch.equal(airl.reward_inputs(samples, space, state_only=True), obs)
    discrete = airl.reward_inputs({"observations": obs[:3], "actions": torch.tensor([2, 0, 1])}, gym.spaces.Discrete(3), False)
    torch.testing.assert_close(discrete, torch.cat([obs[:3], torch.eye(3)[[2, 0, 1]]], -1))

    samples = airl.discriminator_inputs(samples, space, state_only=False, absorbing_state=False)
    torch.testing.assert_close(samples["reward_inputs"], inputs)
    disc = airl.AirlDiscriminator(4, 3, hidden_size=8, reward_layers=2, shaping_layers=2)
    for p in disc.parameters():  # away from the near-zero output initialisation, so that every term counts
        torch.nn.init.normal_(p)
    f = disc(samples, 0.9)
    g, h, h_next = (disc.g(inputs).squeeze(-1), disc.h(obs).squeeze(-1), disc.h(next_obs).squeeze(-1))
    torch.testing.assert_close(f, g + 0.9 * (1 - terminations) * h_next - h)

    policy = airl.Policy(3, space, hidden_size=8)
    log_pi = airl.policy_log_prob(policy, samples)
    torch.testing.assert_close(log_pi, policy.distribution(policy(obs)).log_prob(actions).detach())
    assert not log_pi.requires_grad
    logits = airl.airl_logits(f, log_pi)
    airl.discriminator_loss(logits[:2], logits[2:]).backward()
    assert all(p.grad is None for p in policy.parameters())  # D trains f alone: pi(a|s) is "filled in"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


def test_absorbing_state_inputs_f_and_log_pi():
    """DAC's absorbing state: a terminated transition's s' is s_a = (0, ..., 0, 1) and keeps gamma h(s_a) in f; the
    self-transition rows (s_a, 0, s_a) have every input at s_a, f = g(s_a, 0) + (gamma - 1) h(s_a) and log pi = 0."""
    torch.manual_seed(0)
    space = gym.spaces.Box(np.array([-2.0], dtype=np.float32), np.array([2.0], dtype=np.float32))
    batch = {
        "observations": torch.randn(4, 3),
        "actions": torch.tensor([[1.0], [-4.0], [3.0], [0.5]]),
        "next_observations": torch.randn(4, 3),
        "terminations": torch.tensor([0.0, 1, 0, 1]),
        "absorbing": torch.zeros(4),
    }
    rows = airl.absorbing_transitions(2, batch)
    assert {key: value.shape[1:] for key, value in rows.items()} == {key: value.shape[1:] for key, value in batch.items()}
    assert torch.equal(rows["absorbing"], torch.ones(2)) and all(
        rows[key].abs().sum() == 0 for key in batch if key != "absorbing"
    )
    samples = airl.discriminator_inputs(
        {key: torch.cat([value, rows[key]]) for key, value in batch.items()}, space, state_only=False, absorbing_state=True
    )
    s_a = torch.tensor([0.0, 0, 0, 1])
    real = lambda x: torch.cat([x, torch.zeros(len(x), 1)], -1)
    torch.testing.assert_close(samples["shaping_inputs"], torch.cat([real(batch["observations"]), s_a.expand(2, 4)]))
    expected_next = torch.stack([real(batch["next_observations"])[0], s_a, real(batch["next_observations"])[2], s_a, s_a, s_a])
    torch.testing.assert_close(samples["next_shaping_inputs"], expected_next)
    reward_in = torch.cat([real(torch.cat([batch["observations"], batch["actions"] / 2], -1)), torch.eye(5)[-1:].expand(2, 5)])
    torch.testing.assert_close(samples["reward_inputs"], reward_in)
    assert samples["f_terminations"].sum() == 0  # h(s_a) is learned, not 0

    disc = airl.AirlDiscriminator(5, 4, hidden_size=8, reward_layers=2, shaping_layers=2)
    for p in disc.parameters():
        torch.nn.init.normal_(p)
    f = disc(samples, 0.9)
    g, h = disc.g(reward_in).squeeze(-1), disc.h(samples["shaping_inputs"]).squeeze(-1)
    h_a = disc.h(s_a[None]).squeeze()
    torch.testing.assert_close(f[[1, 3]], g[[1, 3]] + 0.9 * h_a - h[[1, 3]])
    torch.testing.assert_close(f[4:], g[4:] + (0.9 - 1) * h_a)
    assert abs(h_a) > 0.1  # the checks above tell h(s_a) from 0

    policy = airl.Policy(3, space, hidden_size=8)
    log_pi = airl.policy_log_prob(policy, samples)
    assert torch.equal(log_pi[4:], torch.zeros(2)) and (log_pi[:4] != 0).all()


def test_a_termination_bootstraps_the_absorbing_state_value():
    # one env, steps 0-2, terminated at step 1: GAE's delta there is r + gamma r_a / (1 - gamma) - V, not r - V
    rewards, values, next_values = torch.tensor([[1.0], [2.0], [0.5]]), torch.tensor([[3.0], [4.0], [1.0]]), torch.ones(3, 1)
    terminations = torch.tensor([[0.0], [1.0], [0.0]])
    dones = terminations.clone()
    gamma, r_a = 0.9, torch.tensor(-0.4)
    bootstrapped, no_terminations = airl.bootstrap_absorbing_state(next_values, terminations, r_a, gamma)
    torch.testing.assert_close(bootstrapped, torch.tensor([[1.0], [-4.0], [1.0]]))
    assert no_terminations.sum() == 0
    advantages = airl.gae(rewards, values, bootstrapped, no_terminations, dones, gamma, 1.0)
    assert advantages[1, 0].item() == pytest.approx(2.0 + gamma * -4.0 - 4.0)
    # the episode still ends there: step 0's sum does not reach into step 2's
    assert advantages[0, 0].item() == pytest.approx(1.0 + gamma * 1.0 - 3.0 + gamma * advantages[1, 0].item())


def test_update_discriminator_tells_expert_from_replayed_agent_samples():
    """Alg. 1 line 5 on a toy batch: expert transitions around +2, agent ones around -2; the step draws num_samples of the
    replayed negatives per epoch in disc_num_minibatches Adam steps, trains f alone (the policy gets no gradient) and
    ends with D(expert) > 1/2 > D(agent) (a swap of the labels fails)."""
    torch.manual_seed(0)
    space = gym.spaces.Box(np.array([-2.0], dtype=np.float32), np.array([2.0], dtype=np.float32))
    make = lambda n, shift: {
        "observations": torch.randn(n, 3) + shift,
        "actions": torch.randn(n, 1),
        "next_observations": torch.randn(n, 3) + shift,
        "terminations": torch.zeros(n),
        "absorbing": torch.zeros(n),
    }
    expert = airl.discriminator_inputs(make(64, 2.0), space, state_only=False, absorbing_state=True)
    negatives = airl.discriminator_inputs(make(200, -2.0), space, state_only=False, absorbing_state=True)
    disc = airl.AirlDiscriminator(5, 4, hidden_size=16, reward_layers=2, shaping_layers=2)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-2)
    policy = airl.Policy(3, space, hidden_size=8)
    args = airl.Args(disc_epochs=30, disc_num_minibatches=4, gamma=0.9)
    loss = airl.update_discriminator(disc, optimizer, policy, expert, negatives, 40, args)
    assert all(state["step"].item() == 30 * 4 for state in optimizer.state.values())
    assert all(p.grad is None for p in policy.parameters()) and not loss.requires_grad
    with torch.no_grad():
        logits = [airl.airl_logits(disc(x, 0.9), airl.policy_log_prob(policy, x)) for x in (expert, negatives)]
    assert (logits[0] > 0).float().mean() > 0.95 and (logits[1] < 0).float().mean() > 0.95, logits
    assert loss.item() < 0.5 * math.log(2)


def test_update_discriminator_subtracts_each_side_s_log_pi_of_the_current_policy():
    """The loss update_discriminator minimises is discriminator_loss on f - log pi(a|s), each side's log pi from the
    policy at that side's own actions: not GAIL's D on f alone (log pi = 0), nor with the sides swapped. Every row of
    a side is the same transition, so the loss does not depend on which rows the step draws; lr 0 keeps D fixed."""
    torch.manual_seed(0)
    space = gym.spaces.Box(np.array([-2.0], dtype=np.float32), np.array([2.0], dtype=np.float32))
    policy = airl.Policy(3, space, hidden_size=8)
    with torch.no_grad():
        policy.log_std.fill_(-1.0)  # a narrow Gaussian: log pi far from 0, and far apart at the two sides' actions
    make = lambda n, obs, action: airl.discriminator_inputs(
        {
            "observations": torch.tensor([obs]).expand(n, 3),
            "actions": torch.tensor([[action]]).expand(n, 1),
            "next_observations": torch.tensor([obs]).expand(n, 3).flip(-1),
            "terminations": torch.zeros(n),
            "absorbing": torch.zeros(n),
        },
        space,
        state_only=False,
        absorbing_state=True,
    )
    expert, negatives = make(8, [0.5, -1.0, 2.0], 0.0), make(12, [-1.5, 0.3, 0.8], 1.8)
    disc = airl.AirlDiscriminator(5, 4, hidden_size=8, reward_layers=2, shaping_layers=2)
    for p in disc.parameters():
        torch.nn.init.normal_(p)
    args = airl.Args(disc_epochs=1, disc_num_minibatches=1, gamma=0.9)
    loss = airl.update_discriminator(disc, torch.optim.SGD(disc.parameters(), lr=0.0), policy, expert, negatives, 12, args)
    with torch.no_grad():
        f_expert, f_agent = disc(expert, 0.9), disc(negatives, 0.9)
        log_pi_expert, log_pi_agent = airl.policy_log_prob(policy, expert), airl.policy_log_prob(policy, negatives)
        expected = airl.discriminator_loss(f_expert - log_pi_expert, f_agent - log_pi_agent)
        gails = airl.discriminator_loss(f_expert, f_agent)
        swapped = airl.discriminator_loss(f_agent - log_pi_agent, f_expert - log_pi_expert)
    assert abs(log_pi_expert[0] - log_pi_agent[0]) > 1 and log_pi_agent.abs().min() > 1, (log_pi_expert, log_pi_agent)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(gails.item() - expected.item()) > 0.1 and abs(swapped.item() - expected.item()) > 0.1, (gails, swapped)


def soft_optimal_tabular_mdp(num_states=16, gamma=0.9, seed=1):
    """A 4x4 torus with deterministic moves (stay, right, left, down, up) and a random state-only reward r(s); soft
    value iteration gives V*(s) = log sum_a exp Q*(s, a), Q*(s, a) = r(s) + gamma V*(T(s, a)), pi_E = exp(Q* - V*).
    The stay move links every state to its neighbours (the decomposability condition of App. B)."""
    moves = [0, 1, -1, 4, -4]
    next_state = torch.tensor([[(s + m) % num_states for m in moves] for s in range(num_states)])
    r = torch.randn(num_states, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = torch.zeros(num_states, dtype=torch.float64)
    for _ in range(1000):
        q = r[:, None] + gamma * v[next_state]
        v = torch.logsumexp(q, 1)
    return next_state, r, v, q - v[:, None]


def test_state_only_airl_recovers_the_reward_and_value_of_a_tabular_mdp():
    """Thm C.1: at AIRL's equilibrium (agent = expert, D = 1/2) f(s, a, s') = log pi_E(a|s) = r(s) + gamma V*(s') - V*(s),
    so with a state-only g, deterministic dynamics and decomposability, g = r + const and h = V* + const. The script's
    own networks (g linear on one-hot states, i.e. tabular; h its 2-layer ReLU net), f, logit and loss are fitted with
    expert and agent samples both from pi_E: every (s, a, s') once on each side, the population limit of equal occupancies."""
    gamma = 0.9
    next_state, r, v, log_pi_e = soft_optimal_tabular_mdp(gamma=gamma)
    num_states, num_actions = log_pi_e.shape
    torch.testing.assert_close(log_pi_e, r[:, None] + gamma * v[next_state] - v[:, None])  # the soft advantage
    s, a = torch.arange(num_states).repeat_interleave(num_actions), torch.arange(num_actions).repeat(num_states)
    one_hot = torch.eye(num_states)
    samples = {
        "observations": one_hot[s],
        "next_observations": one_hot[next_state[s, a]],
        "actions": a,
        "terminations": torch.zeros(len(s)),
    }
    samples = airl.discriminator_inputs(samples, gym.spaces.Discrete(num_actions), state_only=True, absorbing_state=False)
    log_pi = log_pi_e[s, a].float()

    torch.manual_seed(0)
    disc = airl.AirlDiscriminator(num_states, num_states, hidden_size=32, reward_layers=0, shaping_layers=2)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(1500):
        logits = airl.airl_logits(disc(samples, gamma), log_pi)
        loss = airl.discriminator_loss(logits, logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        f = disc(samples, gamma).double()
        g, h = disc.g(one_hot).squeeze(-1).double(), disc.h(one_hot).squeeze(-1).double()
    assert (f - log_pi_e[s, a]).abs().max() < 0.1  # D = 1/2 everywhere: f = log pi_E(a|s)
    # g is the true reward and h the soft value, each up to a constant
    assert np.corrcoef(g.numpy(), r.numpy())[0, 1] > 0.99
    assert (g - r).std() < 0.05 * r.std(), ((g - r).std(), r.std())
    assert (h - v).std() < 0.05 * v.std(), ((h - v).std(), v.std())

    # a state-action g is not guaranteed to disentangle: g(s, a) = log pi_E(a|s) with h = 0 is as optimal (D = 1/2
    # everywhere, the loss at its minimum 2 log 2), yet it is the advantage, shaped by the dynamics, not r
    zeros = torch.zeros(len(s), dtype=torch.float64)
    f = airl.shaped_reward_f(log_pi_e[s, a], zeros, zeros, zeros, gamma)
    logits = airl.airl_logits(f, log_pi_e[s, a])
    assert airl.discriminator_loss(logits, logits).item() == pytest.approx(2 * math.log(2))
    assert abs(np.corrcoef(log_pi_e[s, a].numpy(), r[s].numpy())[0, 1]) < 0.5


def top_level_sources(path):
    text = path.read_text()
    return {
        node.name: ast.get_source_segment(text, node)
        for node in ast.parse(text).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }


def test_the_trpo_block_is_gails():
    """AIRL runs on gail.py's TRPO/GAE block unchanged, so tests/test_gail.py's tests of it (CG, Fisher products, the KL
    bound, GAE under termination, truncation and autoreset) cover this script too."""
    gail, airl_sources = top_level_sources(SCRIPTS / "gail.py"), top_level_sources(SCRIPTS / "airl.py")
    for name in (
        "layer_init",
        "mlp",
        "Policy",
        "gae",
        "value_loss",
        "conjugate_gradient",
        "fisher_vector_product",
        "trpo_step",
    ):
        assert airl_sources[name] == gail[name], name


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
    "discrete-state-only-subsample-track": ["--env-id", "CartPole-v1", "--state-only", "--subsample-frequency", 4, "--track"],
    "continuous": ["--env-id", "Pendulum-v1"],
    "continuous-state-only-correlation-track": [
        "--env-id",
        "Pendulum-v1",
        "--state-only",
        "--log-reward-correlation",
        "--track",
        "--no-normalize-observations",
    ],
    "continuous-linear-g-no-replay-entropy": [
        "--env-id",
        "Pendulum-v1",
        "--reward-hidden-layers",
        0,
        "--shaping-hidden-layers",
        1,
        "--disc-replay-iterations",
        1,
        "--entropy-weight",
        0.1,
        "--subsample-frequency",
        5,
    ],
    "continuous-video": ["--env-id", "Pendulum-v1", "--capture-video"],
    "discrete-no-absorbing": ["--env-id", "CartPole-v1", "--no-absorbing-state"],
}


@pytest.mark.parametrize("flags", SMOKE.values(), ids=SMOKE.keys())
def test_smoke(workdir, flags):
    run_script("airl.py", *flags, *COMMON, cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    steps = [row["global_step"] for row in rows]
    # the budget is an upper bound: 3 iterations of 2 x 100 env steps, less the autoreset steps
    assert steps[0] == 0 and 400 <= steps[-1] <= 600 and len(rows) >= 3 and (np.diff(steps) > 0).all(), steps
    assert all(np.isfinite(list(row.values())).all() for row in rows), rows
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"], summary["mean_sps"]]).all(), summary
    args = summary["args"]
    assert args["state_only"] == ("--state-only" in flags)
    assert args["log_reward_correlation"] == ("--log-reward-correlation" in flags)
    subsample = flags[flags.index("--subsample-frequency") + 1] if "--subsample-frequency" in flags else 1
    assert args["subsample_frequency"] == subsample
    assert args["reward_hidden_layers"] == (0 if "--reward-hidden-layers" in flags else 2)
    assert args["disc_replay_iterations"] == (1 if "--disc-replay-iterations" in flags else 20)
    assert args["entropy_weight"] == (0.1 if "--entropy-weight" in flags else 1.0)
    assert args["absorbing_state"] == ("--no-absorbing-state" not in flags)
    correlation_csv = run_dir / "reward_correlation.csv"
    assert correlation_csv.exists() == ("--log-reward-correlation" in flags)
    if correlation_csv.exists():
        lines = correlation_csv.read_text().splitlines()
        assert lines[0] == "global_step,g_agent,g_expert,g_all,reward_agent" and len(lines) == 4, lines
        values = np.array([line.split(",") for line in lines[1:]], dtype=float)
        # Pendulum's reward varies along every batch: each correlation is a number in [-1, 1]
        assert np.isfinite(values).all() and (np.abs(values[:, 1:]) <= 1).all(), values
        assert list(values[:, 0]) == steps[1:], (values, steps)
    if "--track" in flags:
        assert list((workdir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    if "--capture-video" in flags:
        assert list((workdir / "videos").rglob("*.mp4")), "no evaluation video recorded"


def test_main_rewards_f_minus_log_pi_and_bootstraps_a_termination_from_the_absorbing_state(workdir, monkeypatch):
    """What main feeds GAE in its last iteration (the script's globals after a CartPole-v1 run, whose random episodes
    terminate): the reward of each agent step is log D - log(1 - D) = f - log pi(a|s) of the updated discriminator and
    the policy that acted, and a terminated step bootstraps V(s_a) = r_a / (1 - gamma) with no termination left for
    `gae` (--absorbing-state). Main mixes these itself (no named function to call), so only a run shows them."""
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "airl.py"), "--env-id", "CartPole-v1", *map(str, COMMON)])
    script = runpy.run_path(str(SCRIPTS / "airl.py"), run_name="__main__")
    args, mask, batch, discriminator = script["args"], script["mask"], script["batch"], script["discriminator"]
    assert args.entropy_weight == 1.0 and args.absorbing_state
    with torch.no_grad():
        f = discriminator(batch, args.gamma)
        absorbing_reward = discriminator(script["absorbing_sample"], args.gamma)  # f of (s_a, 0, s_a), log pi = 0
    log_pi = script["agent_log_pi"]
    assert (log_pi < -0.1).all()  # a stochastic policy: the -log pi term is visible
    torch.testing.assert_close(script["rewards"][mask], f - log_pi)
    terminated = script["b_terminations"].bool()
    assert terminated.any() and script["terminations"].sum() == 0
    torch.testing.assert_close(
        script["next_values"][terminated], (absorbing_reward / (1 - args.gamma)).expand(int(terminated.sum()))
    )


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_logs_discriminator_accuracy_reward_and_kl(workdir, monkeypatch, env_id):
    logged = run_script_recording_wandb(
        "airl.py", "--env-id", env_id, *COMMON, "--max-kl", 0.005, cwd=workdir, monkeypatch=monkeypatch
    )
    iterations = [log for log in logged if "charts/kl" in log]
    assert len(iterations) >= 3, logged
    for log in iterations:
        assert 0 <= log["charts/disc_accuracy_expert"] <= 1 and 0 <= log["charts/disc_accuracy_agent"] <= 1, log
        assert 0 <= log["charts/kl"] <= 0.005 * (1 + 1e-5), log
        finite = ("charts/learned_reward", "losses/discriminator_loss", "charts/g_expert", "charts/g_agent")
        assert all(math.isfinite(log[key]) for key in finite), log
    # within three iterations D tells the random agent from the expert, and g scores the expert's samples higher
    last = iterations[-1]
    assert last["charts/disc_accuracy_expert"] + last["charts/disc_accuracy_agent"] > 1, iterations
    assert last["charts/g_expert"] > last["charts/g_agent"], iterations
    # the policy's reward (entropy weight 1) is D's logit log D - log(1 - D) on the agent's samples, negative where D
    # calls them the agent's (measured, seed 1: -3.3 on CartPole-v1, -1.9 on Pendulum-v1): main's sign, not only
    # learned_reward's
    assert last["charts/learned_reward"] < 0, iterations


def test_bad_input_is_one_clear_sentence(workdir):
    result = run_script("airl.py", "--env-id", "Acrobot-v1", "--expert-path", workdir / "nowhere", cwd=workdir, check=False)
    assert_clean_error(result, "is not a usable expert folder", f"python cleanil/demos.py --check {workdir / 'nowhere'}")
    result = run_script("airl.py", "--num-expert-trajectories", 100_000, cwd=workdir, check=False)
    assert_clean_error(result, "--num-expert-trajectories 100000 is not between 1 and its")
    result = run_script("airl.py", "--disc-replay-iterations", 0, cwd=workdir, check=False)
    assert_clean_error(result, "--disc-replay-iterations must be positive")
    result = run_script("airl.py", "--reward-hidden-layers", -1, cwd=workdir, check=False)
    assert_clean_error(result, "--reward-hidden-layers and --shaping-hidden-layers must be >= 0")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("terminations", np.nan, "its terminations are not finite"),
        ("actions", np.nan, "its actions are not finite"),
        ("next_observations", None, "next_observations is not a file"),
    ],
)
def test_demos_with_invalid_or_missing_arrays_are_refused(workdir, key, value, fragment):
    # AIRL reads actions, next observations and terminations (f needs s' and whether the episode ended there)
    expert_dir = workdir / "expert"
    shutil.copytree(EXPERTS / "CartPole-v1", expert_dir)
    with np.load(expert_dir / "demos.npz") as npz:
        demos = {name: npz[name] for name in npz.files}
    if value is None:
        del demos[key]
    else:
        demos[key] = np.full(demos[key].shape, value, dtype=np.float32)
    np.savez_compressed(expert_dir / "demos.npz", **demos)
    result = run_script("airl.py", "--expert-path", expert_dir, *COMMON, cwd=workdir, check=False)
    assert_clean_error(result, fragment, f"python cleanil/demos.py --check {expert_dir}")
    assert not (workdir / "runs").exists()


@pytest.mark.learning
def test_airl_pendulum_imitates_the_expert(workdir):
    # Pendulum never terminates and its log pi(a|s) has no sign, so the reward f - log pi carries no survival bonus:
    # the return comes from imitation alone (random -1221, expert -168: normalized 0 and 1)
    run_script("airl.py", "--env-id", "Pendulum-v1", "--total-timesteps", 200_000, "--eval-frequency", 40_000, cwd=workdir)
    rows = read_eval_csv(run_dirs(workdir)[0])
    scores = [row["normalized_score"] for row in rows]
    assert max(scores) >= 0.85 and scores[-1] >= 0.8, scores
