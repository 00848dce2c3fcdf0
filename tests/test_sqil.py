"""sqil.py: the balanced batch's rewards (1 for demonstrations, 0 for the agent's samples), the soft value and the soft
Bellman error of Eq. 1, Alg. 1's weighting of the two halves, the soft-optimal policy, soft Q-learning and SAC driving
Q towards 1 / (1 - gamma) on demonstrated pairs and 0 elsewhere, the target networks' update frequency, the absorbing
state that keeps a goal the expert ends at worth reaching, every flag end to end on a discrete and a continuous env,
the checkpoint rules, bad input, the SAC block shared with sac.py, and imitating from one demo."""

import inspect
import os
import runpy
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import sac
import sqil
import torch

from conftest import SCRIPTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script

TINY = [
    "--total-timesteps",
    "300",
    "--learning-starts",
    "100",
    "--eval-frequency",
    "150",
    "--eval-episodes",
    "2",
    "--batch-size",
    "32",
    "--hidden-size",
    "32",
]


def args_for(**overrides):
    return types.SimpleNamespace(**{**vars(sqil.Args()), **overrides})


def with_indicator(obs, absorbing=0.0):
    """Observations as the buffers store them: the absorbing-state indicator appended."""
    return torch.cat([obs, torch.full((len(obs), 1), absorbing)], 1)


def replay_sample(obs, actions, next_obs, terminations):
    """A replay buffer's sample (obs, actions, rewards, next_obs, terminations), its reward column deliberately wrong:
    SQIL's rewards come from which buffer a row was drawn from, not from what it stores."""
    return obs, actions, torch.full((len(obs),), 0.5), next_obs, terminations


def test_balanced_batch_rewards_demonstrations_one_and_samples_zero():
    demo = replay_sample(
        with_indicator(torch.full((3, 2), 7.0)),
        torch.full((3, 1), 1.0),
        with_indicator(torch.full((3, 2), 8.0)),
        torch.zeros(3),
    )
    agent_obs = torch.cat([with_indicator(torch.full((4, 2), -7.0)), with_indicator(torch.zeros(1, 2), 1.0)])
    agent = replay_sample(agent_obs, torch.full((5, 1), 0.0), with_indicator(torch.full((5, 2), -8.0)), torch.ones(5))
    obs, actions, rewards, next_obs, terminations, absorbing = sqil.balanced_batch(demo, agent)
    assert rewards.tolist() == [1.0] * 3 + [0.0] * 5  # the demonstrations first, each half keeps its own rows
    assert obs.shape == next_obs.shape == (8, 2)  # the networks never see the indicator
    assert (obs[:3] == 7).all() and (obs[3:7] == -7).all() and (next_obs[:3] == 8).all() and (next_obs[3:] == -8).all()
    assert actions.squeeze(1).tolist() == [1.0] * 3 + [0.0] * 5 and terminations.tolist() == [0.0] * 3 + [1.0] * 5
    assert absorbing.tolist() == [0.0] * 7 + [1.0]


def test_transition_rows_lead_a_termination_into_the_absorbing_state():
    obs, next_obs = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.array([[5.0, 6.0], [7.0, 8.0]], np.float32)
    actions = np.array([[0.5], [-0.5]], np.float32)
    rows_obs, rows_actions, rows_next, rows_terminations = sqil.transition_rows(obs, actions, next_obs, [0, 1], False)
    assert rows_obs.tolist() == [[1, 2, 0], [3, 4, 0]] and rows_next.tolist() == [[5, 6, 0], [7, 8, 0]]
    assert rows_terminations.tolist() == [0, 1]  # the paper's V(s') = 0 after a termination
    rows_obs, rows_actions, rows_next, rows_terminations = sqil.transition_rows(obs, actions, next_obs, [0, 1], True)
    # the terminated transition ends in s_a, followed by one self-transition (s_a, 0, s_a) that is not terminated
    assert rows_obs.tolist() == [[1, 2, 0], [3, 4, 0], [0, 0, 1]] and rows_actions.tolist() == [[0.5], [-0.5], [0]]
    assert rows_next.tolist() == [[5, 6, 0], [0, 0, 1], [0, 0, 1]] and rows_terminations.tolist() == [0, 1, 0]
    # the demonstrations keep one self-transition per terminated episode, whatever subsampling dropped
    rows_obs = sqil.transition_rows(obs, actions, next_obs, [0, 0], True, num_absorbing=2)[0]
    assert rows_obs.tolist() == [[1, 2, 0], [3, 4, 0], [0, 0, 1], [0, 0, 1]]


def test_soft_value_is_the_log_sum_exp_and_tends_to_the_max():
    q_values = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(sqil.soft_value(q_values, 1.0), torch.log(torch.exp(q_values).sum(-1)))
    assert torch.allclose(sqil.soft_value(q_values, 2.0), 2.0 * torch.log(torch.exp(q_values / 2.0).sum(-1)))
    assert torch.allclose(sqil.soft_value(q_values, 1e-3), q_values.max(-1).values, atol=1e-2)
    assert sqil.soft_value(torch.zeros(1, 4), 1.0).item() == pytest.approx(np.log(4))


def test_soft_bellman_error_bootstraps_only_without_termination_and_holds_the_target():
    q_values = torch.tensor([0.5, 0.5], requires_grad=True)
    next_value = torch.tensor([2.0, 2.0], requires_grad=True)
    errors = sqil.soft_bellman_error(q_values, torch.tensor([1.0, 1.0]), 0.9, torch.tensor([0.0, 1.0]), next_value)
    assert errors.tolist() == pytest.approx([(0.5 - (1 + 0.9 * 2)) ** 2, (0.5 - 1) ** 2])
    errors.sum().backward()
    assert next_value.grad is None and q_values.grad is not None  # a semi-gradient: the target is held fixed


def test_sqil_loss_weights_the_demonstration_and_sample_halves():
    errors = torch.tensor([[1.0, 3.0, 10.0, 20.0, 30.0], [2.0, 2.0, 0.0, 0.0, 0.0]])  # two critics, demos first (2 rows)
    expected = (2.0 + 0.5 * 20.0) + (2.0 + 0.5 * 0.0)
    assert sqil.sqil_loss(errors, 2, 0.5).item() == pytest.approx(expected)
    assert sqil.sqil_loss(errors, 2, 0.0).item() == pytest.approx(4.0)  # lambda_samp = 0: the demonstrations only
    assert sqil.sqil_loss(errors[0], 2, 1.0).item() == pytest.approx(2.0 + 20.0)


def test_soft_q_policy_is_the_boltzmann_distribution_of_q():
    q_values = torch.tensor([[0.0, 1.0, 3.0]])
    for temperature in (0.5, 1.0, 4.0):
        probs = sqil.soft_q_policy(q_values, temperature).probs
        assert torch.allclose(probs, torch.softmax(q_values / temperature, -1))
        # pi(a|s) = exp((Q(s, a) - V(s)) / alpha)
        assert torch.allclose(probs, torch.exp((q_values - sqil.soft_value(q_values, temperature)[:, None]) / temperature))


def fixed_batch(obs_dim, num_demo, num_agent, demo_action, agent_action, terminal, seed=0):
    """Demonstrated states (first coordinate +1) with one action, agent states (-1) with another; each transition goes
    to a state of its own kind, and ends there when terminal."""
    generator = torch.Generator().manual_seed(seed)
    demo_obs = torch.cat([torch.ones(num_demo, 1), 0.1 * torch.randn(num_demo, obs_dim - 1, generator=generator)], 1)
    agent_obs = torch.cat([-torch.ones(num_agent, 1), 0.1 * torch.randn(num_agent, obs_dim - 1, generator=generator)], 1)
    demo = replay_sample(
        with_indicator(demo_obs),
        torch.full((num_demo, 1), demo_action),
        with_indicator(demo_obs.roll(1, 0)),
        torch.full((num_demo,), float(terminal)),
    )
    agent = replay_sample(
        with_indicator(agent_obs),
        torch.full((num_agent, 1), agent_action),
        with_indicator(agent_obs.roll(1, 0)),
        torch.full((num_agent,), float(terminal)),
    )
    return sqil.balanced_batch(demo, agent)


def soft_q_nets(obs_dim, num_actions, absorbing_reward=None):
    qf, qf_target = sqil.q_mlp(obs_dim, num_actions, 64), sqil.q_mlp(obs_dim, num_actions, 64)
    qf_target.load_state_dict(qf.state_dict())
    nets = {"qf": qf, "qf_target": qf_target}
    nets |= {} if absorbing_reward is None else {"absorbing_reward": absorbing_reward}
    return nets, {
        "q": torch.optim.Adam([*qf.parameters(), *([] if absorbing_reward is None else [absorbing_reward])], lr=3e-3)
    }


def test_soft_q_learning_reaches_the_sqil_fixed_point():
    """One action (so V(s) = Q(s) exactly), gamma 0.5, no termination: Q -> 1 / (1 - gamma) = 2 on the demonstrations
    and 0 on the agent's samples, through the bootstrapped target; swapped rewards or halves would swap them."""
    torch.manual_seed(0)
    args = args_for(gamma=0.5, soft_q_temperature=1.0, tau=0.05, lambda_samp=1.0)
    batch = fixed_batch(3, 16, 16, 0.0, 0.0, terminal=False)
    nets, optimizers = soft_q_nets(3, 1)
    for step in range(1, 3001):
        stats = sqil.sqil_update(batch, 16, nets, optimizers, args, step)
    assert stats["losses/q_demo"].item() == pytest.approx(2.0, abs=0.1)
    assert stats["losses/q_agent"].item() == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("continuous", [False, True])
def test_the_targets_follow_every_target_network_frequency_steps(continuous):
    """--target-network-frequency in both paths (issue 35): the target critics move on every third step only."""
    torch.manual_seed(0)
    args = args_for(target_network_frequency=3, policy_frequency=1, tau=0.5)
    batch = fixed_batch(3, 4, 4, 0.5 if continuous else 0.0, -0.5 if continuous else 1.0, terminal=False)
    nets, optimizers = sac_nets() if continuous else soft_q_nets(3, 2)
    moved = []
    for step in range(1, 7):
        before = [p.clone() for p in nets["qf_target"].parameters()]
        sqil.sqil_update(batch, 4, nets, optimizers, args, step)
        moved.append(any(not torch.equal(a, b) for a, b in zip(before, nets["qf_target"].parameters())))
    assert moved == [False, False, True, False, False, True]


def test_a_termination_is_worth_the_learned_absorbing_value_not_zero():
    """absorbing_state_values: s_a's self-transition rows take Q = V(s') = V(s_a), a terminated row V(s') = V(s_a),
    and no row stays terminated; the target's V(s_a) is held fixed, Q's is trained. Leading axes (twin critics) too."""
    q_values, next_value = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), torch.tensor([10.0, 20.0, 30.0])
    terminations, absorbing = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    v_a = torch.tensor(7.0, requires_grad=True)
    q, v_next, no_terminations = sqil.absorbing_state_values(q_values, next_value, terminations, absorbing, v_a)
    assert q.tolist() == [[1.0, 2.0, 7.0], [4.0, 5.0, 7.0]] and v_next.tolist() == [10.0, 7.0, 7.0]
    assert no_terminations.tolist() == [0.0, 0.0, 0.0]
    (q.sum() + v_next.sum()).backward()
    assert v_a.grad.item() == 2.0  # through the two critics' Q(s_a) only, never through the target


@pytest.mark.parametrize("absorbing_state", [False, True])
def test_the_absorbing_state_keeps_the_expert_s_goal_worth_reaching(absorbing_state):
    """One state, two actions: the expert takes "finish" (terminates, as at Acrobot's goal), the agent "stay" (back to
    the same state). With the paper's V = 0 after a termination, Q(finish) -> 1 while Q(stay) -> gamma V(s), which
    SQIL's reward keeps above it: the agent learns never to finish. With the absorbing state, whose self-transitions
    carry the demonstrations' reward 1, Q(finish) -> 1 + gamma / (1 - gamma) = 1 / (1 - gamma) > Q(stay)."""
    torch.manual_seed(0)
    gamma = 0.9
    args = args_for(gamma=gamma, soft_q_temperature=1.0, tau=0.05, lambda_samp=1.0)
    state = np.array([[1.0, 0.0]], dtype=np.float32)
    demo = sqil.transition_rows(state, np.zeros((1, 1), np.float32), state, [1.0], absorbing_state)
    agent = sqil.transition_rows(state, np.ones((1, 1), np.float32), state, [0.0], absorbing_state)
    demo, agent = (replay_sample(*[torch.as_tensor(rows).repeat_interleave(8, 0) for rows in half]) for half in (demo, agent))
    batch = sqil.balanced_batch(demo, agent)
    absorbing_reward = torch.zeros((), requires_grad=True) if absorbing_state else None
    nets, optimizers = soft_q_nets(2, 2, absorbing_reward)
    for step in range(1, 3001):
        sqil.sqil_update(batch, len(demo[0]), nets, optimizers, args, step)
    q_finish, q_stay = nets["qf"](torch.as_tensor(state))[0].tolist()
    if absorbing_state:
        assert absorbing_reward.item() / (1 - gamma) == pytest.approx(1 / (1 - gamma), rel=0.05)
        assert q_finish == pytest.approx(1 / (1 - gamma), rel=0.05) and q_finish > q_stay + 0.5, (q_finish, q_stay)
    else:
        assert q_finish == pytest.approx(1.0, abs=0.1) and q_stay > q_finish + 0.5, (q_finish, q_stay)


def sac_nets(obs_dim=3):
    env = types.SimpleNamespace(
        observation_space=types.SimpleNamespace(shape=(obs_dim,)),
        action_space=types.SimpleNamespace(shape=(1,), high=np.ones(1), low=-np.ones(1)),
    )
    actor, qf, qf_target = sqil.Actor(env, 64, -5, 2), sqil.SoftQEnsemble(obs_dim, 1, 64), sqil.SoftQEnsemble(obs_dim, 1, 64)
    qf_target.load_state_dict(qf.state_dict())
    log_alpha = torch.tensor(np.log(0.01), requires_grad=True)
    nets = {"qf": qf, "qf_target": qf_target, "actor": actor, "log_alpha": log_alpha}
    optimizers = {"q": torch.optim.Adam(qf.parameters(), lr=3e-3), "actor": torch.optim.Adam(actor.parameters(), lr=3e-3)}
    return nets, optimizers | {"alpha": torch.optim.Adam([log_alpha], lr=1e-3)}


def test_sac_critics_learn_reward_one_on_demonstrations_and_zero_on_samples():
    """The continuous path (SAC, both critics): terminal transitions, so Q -> r, 1 on the demonstrations and 0 on the
    agent's samples; the actor and alpha are trained too (--autotune)."""
    torch.manual_seed(0)
    args = args_for(gamma=0.5, policy_frequency=2, target_network_frequency=1, tau=0.05, autotune=True, lambda_samp=1.0)
    batch = fixed_batch(3, 16, 16, 0.5, -0.5, terminal=True)
    nets, optimizers = sac_nets()
    for step in range(1, 1501):
        stats = sqil.sqil_update(batch, 16, nets, optimizers, args, step)
    q_values = nets["qf"](batch[0], batch[1]).detach()  # [2 critics, 32]
    assert torch.allclose(q_values[:, :16], torch.ones(2, 16), atol=0.05)
    assert torch.allclose(q_values[:, 16:], torch.zeros(2, 16), atol=0.05)
    assert np.isfinite(stats["losses/actor_loss"].item()) and stats["losses/alpha"].item() != pytest.approx(0.01)


@pytest.mark.parametrize("continuous", [False, True])
def test_the_bootstrap_reads_the_target_critics_and_keeps_the_entropy_term(continuous):
    """One sqil_update's loss is Alg. 1's on a batch whose target critics differ from the online ones, by hand: V(s')
    of the target critics, soft (the log-sum-exp at temperature 0.5, or min_k Q'_k(s', a') - alpha log pi(a'|s') with
    alpha 0.5), never the online critics' nor the hard max / min_k Q' alone; reward 1 on the first half, 0 on the
    second. lr 0: nothing moves, and no actor step (policy_frequency 2 at step 1)."""
    torch.manual_seed(0)
    args = args_for(gamma=0.9, soft_q_temperature=0.5, lambda_samp=0.7, policy_frequency=2, target_network_frequency=5)
    obs, actions, rewards, next_obs, terminations, absorbing = fixed_batch(
        3, 4, 4, 0.5 if continuous else 0.0, -0.5 if continuous else 1.0, terminal=False
    )
    terminations = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    batch = (obs, actions, rewards, next_obs, terminations, absorbing)
    nets, optimizers = sac_nets() if continuous else soft_q_nets(3, 2)
    optimizers = {
        name: torch.optim.SGD([p for group in opt.param_groups for p in group["params"]], lr=0.0)
        for name, opt in optimizers.items()
    }
    with torch.no_grad():
        for p in nets["qf_target"].parameters():  # a target that differs from the online critics
            p.add_(0.3 * torch.randn_like(p))
        if continuous:
            nets["log_alpha"].fill_(np.log(0.5))
    qf, qf_target = nets["qf"], nets["qf_target"]

    def loss_with(next_value):
        with torch.no_grad():
            q = qf(obs, actions) if continuous else qf(obs).gather(1, actions.long()).squeeze(1)
            errors = (q - (torch.tensor([1.0] * 4 + [0.0] * 4) + 0.9 * (1 - terminations) * next_value)).square()
            return (errors[..., :4].mean(-1) + 0.7 * errors[..., 4:].mean(-1)).sum().item()

    torch.manual_seed(1)
    with torch.no_grad():
        if continuous:  # a' ~ pi(s'), drawn as sqil_update draws it
            next_actions, next_log_pi = nets["actor"].get_action(next_obs)
            target, online = (net(next_obs, next_actions).min(0).values for net in (qf_target, qf))
            expected, alternatives = loss_with(target - 0.5 * next_log_pi), [target, online - 0.5 * next_log_pi]
        else:
            target_q, online_q = qf_target(next_obs), qf(next_obs)
            expected = loss_with(0.5 * torch.logsumexp(target_q / 0.5, -1))
            alternatives = [target_q.max(-1).values, 0.5 * torch.logsumexp(online_q / 0.5, -1)]
    torch.manual_seed(1)
    stats = sqil.sqil_update(batch, 4, nets, optimizers, args, 1)
    assert stats["losses/qf_loss"].item() == pytest.approx(expected, rel=1e-5)
    for alternative in alternatives:  # the entropy term dropped, or the online critics: another loss
        assert abs(loss_with(alternative) - expected) > 1e-2 * expected, (loss_with(alternative), expected)
    assert "losses/actor_loss" not in stats


def test_the_actor_never_trains_on_the_absorbing_state(monkeypatch):
    """s_a has one fixed action: the actor's and alpha's losses take the other rows' states only."""
    batch = list(fixed_batch(3, 4, 4, 0.5, -0.5, terminal=False))
    batch[5] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0])  # three rows are s_a's self-transitions
    nets, optimizers = sac_nets()
    seen, policy_loss = [], sqil.policy_loss
    monkeypatch.setattr(
        sqil, "policy_loss", lambda actor, qf, obs, alpha: seen.append(obs) or policy_loss(actor, qf, obs, alpha)
    )
    sqil.sqil_update(batch, 4, nets, optimizers, args_for(policy_frequency=1), 1)
    assert len(seen) == 1 and torch.equal(seen[0], batch[0][[0, 1, 2, 4, 5]])


@pytest.mark.parametrize(
    "name",
    ["SoftQEnsemble", "Actor", "ReplayBuffer", "policy_loss", "alpha_loss", "bf16_is_fast", "make_optimizer"]
    + ["save_checkpoint", "load_checkpoint"],
)
def test_the_sac_and_checkpoint_blocks_are_sac_py_s(name):  # the shared plumbing: tests/test_shared_blocks.py
    assert inspect.getsource(getattr(sqil, name)) == inspect.getsource(getattr(sac, name)), name


def test_sqil_has_its_own_sac_step_instead_of_sac_py_s():
    """sac.py's soft_q_loss / sac_update are left out (SQIL weighs the two halves and skips s_a): sqil_update does both."""
    assert not hasattr(sqil, "soft_q_loss") and not hasattr(sqil, "sac_update")


@pytest.mark.parametrize(
    "flags",
    [
        ["--env-id", "CartPole-v1"],
        [
            "--env-id",
            "CartPole-v1",
            "--track",
            "--num-expert-trajectories",
            "3",
            "--subsample-frequency",
            "4",
            "--soft-q-temperature",
            "0.5",
            "--lambda-samp",
            "0.5",
            "--demo-fraction",
            "0.25",
            "--target-network-frequency",
            "2",
            "--any-env",
        ],
        ["--env-id", "Pendulum-v1"],
        ["--env-id", "Pendulum-v1", "--autotune", "--no-bf16", "--lambda-samp", "2", "--demo-fraction", "0.75", "--track"],
        ["--env-id", "Acrobot-v1", "--subsample-frequency", "20"],
        ["--env-id", "MountainCar-v0", "--absorbing-state", "off"],
        ["--env-id", "Hopper-v4", "--absorbing-state", "on"],
    ],
    ids=[
        "discrete",
        "discrete-all-flags",
        "continuous",
        "continuous-all-flags",
        "discrete-absorbing-auto",
        "discrete-no-absorbing",
        "continuous-absorbing",
    ],
)
def test_smoke(tmp_path, flags):
    run_script("sqil.py", *flags, *TINY, cwd=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == [0, 150, 300]
    assert all(np.isfinite(list(row.values())).all() for row in rows), rows
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"]]).all()
    for flag, key in (
        ("--lambda-samp", "lambda_samp"),
        ("--demo-fraction", "demo_fraction"),
        ("--subsample-frequency", "subsample_frequency"),
        ("--target-network-frequency", "target_network_frequency"),
    ):
        if flag in flags:
            assert summary["args"][key] == pytest.approx(float(flags[flags.index(flag) + 1]))
    if "--track" in flags:
        assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    # "auto" resolves to "on" where the loaded demonstrations end by termination (Acrobot's goal), else "off"
    resolved = "on" if "Acrobot-v1" in flags else "off"
    assert summary["args"]["absorbing_state"] == (
        flags[flags.index("--absorbing-state") + 1] if "--absorbing-state" in flags else resolved
    )
    discrete = any(env_id in flags for env_id in ("CartPole-v1", "Acrobot-v1", "MountainCar-v0"))
    assert summary["precision"] == (
        "fp32" if discrete or "--no-bf16" in flags or not sac.bf16_is_fast(torch.device("cpu")) else "bf16-autocast"
    )
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def start_and_stop(flags, cwd, rows):
    """sqil.py flags in its own process, stopped by SIGTERM once eval.csv holds `rows` rows: (exit status, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, str(SCRIPTS / "sqil.py"), *map(str, flags)]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (paths := list(cwd.glob("runs/*/eval.csv"))) or len(paths[0].read_text().splitlines()) <= rows:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the run never wrote its evaluations"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def run_in_process(args, cwd, monkeypatch):
    """python cleanil/sqil.py <args> in this process; returns the script's globals (its networks and optimisers)."""
    monkeypatch.setattr(signal, "signal", lambda *a, **k: None)  # the run's handlers would outlive it in pytest
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "sqil.py"), *map(str, args)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a run_script process computes
    try:
        return runpy.run_path(str(SCRIPTS / "sqil.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)


def test_main_puts_the_demonstrations_first(tmp_path, monkeypatch):
    """The last minibatch main fed sqil_update (the script's globals after a short CartPole-v1 run): its first num_demo
    rows are drawn from the demonstrations' buffer and rewarded 1, the rest from the agent's buffer and rewarded 0.
    Main draws the two halves itself, so only a run shows this (a swap there makes SQIL reward the agent)."""
    script = run_in_process(["--env-id", "CartPole-v1", *TINY], tmp_path, monkeypatch)
    batch, num_demo = script["batch"], script["num_demo"]
    obs = batch[0]  # the absorbing-state indicator split off
    demo_rb, rb = script["demo_rb"], script["rb"]

    def drawn_from(rows, buffer):
        stored = buffer.rows[: buffer.size if buffer.full else buffer.pos, : rows.shape[1]]
        return (rows[:, None] == stored[None]).all(-1).any(1)

    assert 0 < num_demo < len(obs)
    assert drawn_from(obs[:num_demo], demo_rb).all() and not drawn_from(obs[:num_demo], rb).any()
    assert drawn_from(obs[num_demo:], rb).all() and not drawn_from(obs[num_demo:], demo_rb).any()
    assert batch[2].tolist() == [1.0] * num_demo + [0.0] * (len(obs) - num_demo)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "Acrobot-v1"])
def test_checkpoint_rules(tmp_path, monkeypatch, env_id):
    """SIGTERM mid-run: a compact checkpoint (no replay buffer; s_a's learned reward where the demonstrations terminate),
    exit 128 + 15; a fresh run refuses to overwrite it; --resume refills the agent's buffer (100 steps, no updates),
    continues the optimisers, rewinds eval.csv to the checkpoint's rows and deletes the checkpoint when it finishes."""
    flags = ["--env-id", env_id, *TINY[2:], "--refill-steps", "100"]  # TINY less its budget
    path = tmp_path / "checkpoints" / f"{env_id}__sqil__1.pt"
    code, stderr = start_and_stop([*flags, "--total-timesteps", "1000000"], tmp_path, rows=2)
    assert code == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr[-3000:]
    assert "--resume" in stderr.splitlines()[-1], stderr[-500:]
    checkpoint = torch.load(path, weights_only=False)
    step, (run_dir,) = checkpoint["progress"]["global_step"], run_dirs(tmp_path)
    assert step >= 150 and checkpoint["progress"]["run_name"] == run_dir.name and path.stat().st_size < 300_000
    assert "q_optimizer" in checkpoint["state"] and ("absorbing_reward" in checkpoint["state"]) == (env_id == "Acrobot-v1")

    refused = run_script("sqil.py", *flags, "--total-timesteps", "600", cwd=tmp_path, check=False)
    assert_clean_error(refused, "holds an interrupted run's checkpoint", "--resume")
    assert run_dirs(tmp_path) == [run_dir]

    with open(run_dir / "eval.csv", "a") as eval_csv:  # as if killed after evaluating past its checkpoint
        eval_csv.write(f"{step + 150},-1,0,nan,1,1\n")
    total = step + 300
    script = run_in_process([*flags, "--total-timesteps", total, "--resume"], tmp_path, monkeypatch)
    assert run_dirs(tmp_path) == [run_dir]
    assert [row["global_step"] for row in read_eval_csv(run_dir)] == sorted(set(range(0, total + 1, 150)) | {total})
    summary = read_summary(run_dir)
    assert summary["refill_env_steps"] == 100 and summary["args"]["resume"] is True and not path.exists()
    # one update per step after learning_starts, continued (not restarted), none while refilling
    assert script["optimizers"]["q"].state_dict()["state"][0]["step"] == total - 100
    assert_clean_error(run_script("sqil.py", *flags, "--resume", cwd=tmp_path, check=False), "no checkpoint", path.name)


def test_bad_input_is_a_clean_error(tmp_path):
    for flags, fragment in [
        (["--demo-fraction", "1"], "--demo-fraction 1.0 leaves one half of --batch-size 256 empty"),
        (["--soft-q-temperature", "0"], "--soft-q-temperature must be positive"),
        (["--target-network-frequency", "0"], "--target-network-frequency must be positive"),
        (["--lambda-samp", "-1"], "--lambda-samp"),
        (["--total-timesteps", "100", "--learning-starts", "100"], "must exceed --learning-starts 100"),
        (["--num-expert-trajectories", "1000"], "--num-expert-trajectories 1000 is not between 1 and its"),
    ]:
        env_id = "Pendulum-v1" if "--num-expert-trajectories" in flags else "CartPole-v1"
        assert_clean_error(run_script("sqil.py", "--env-id", env_id, *flags, cwd=tmp_path, check=False), fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.learning
def test_sqil_imitates_cartpole_from_one_trajectory(tmp_path):
    """Soft Q-learning, 1 expert trajectory, 20k steps (measured: 500 at 18k and 20k, seed 1)."""
    run_script(
        "sqil.py",
        "--env-id",
        "CartPole-v1",
        "--total-timesteps",
        "20000",
        "--learning-starts",
        "1000",
        "--eval-frequency",
        "5000",
        cwd=tmp_path,
        timeout=1800,
    )
    (run_dir,) = run_dirs(tmp_path)
    assert read_summary(run_dir)["final_return"] >= 450, read_eval_csv(run_dir)


@pytest.mark.learning
def test_sqil_imitates_pendulum_from_one_trajectory(tmp_path):
    """SAC with the fixed temperature, 1 expert trajectory (200 transitions), 10k steps (measured: normalized 0.93)."""
    run_script(
        "sqil.py",
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        "10000",
        "--learning-starts",
        "1000",
        "--eval-frequency",
        "2500",
        cwd=tmp_path,
        timeout=1800,
    )
    (run_dir,) = run_dirs(tmp_path)
    assert read_summary(run_dir)["final_normalized_score"] >= 0.85, read_eval_csv(run_dir)
