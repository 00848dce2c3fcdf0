"""cfil.py: the MAF (a normalised density, autoregressive Jacobians, exact log-determinants, masks that survive
training), the coupled DV estimator on two known Gaussians, the losses on toy tensors, float32 log-densities and
losses under bf16 autocast, the density step's direction (the expert gets the higher reward), the CPU overhead over
sac.py (benchmark), the blocks copied from sac.py, every variant and mode end to end, state-only modes that never
read the demos' actions, the checkpoint rules (SIGTERM, resume with a refilled buffer, delete when finished), bad
input, and imitating Pendulum-v1 from one demo."""

import inspect
import json
import os
import runpy
import signal
import subprocess
import sys
import time

import cfil
import gymnasium as gym
import numpy as np
import pytest
import sac
import torch

from conftest import EXPERTS, SCRIPTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script

TINY = [
    "--env-id",
    "Pendulum-v1",
    "--total-timesteps",
    "300",
    "--learning-starts",
    "100",
    "--density-update-every",
    "100",
    "--density-batch",
    "32",
    "--eval-frequency",
    "150",
    "--eval-episodes",
    "2",
    "--batch-size",
    "32",
    "--hidden-size",
    "32",
    "--flow-hidden-size",
    "32",
]


def grid_mass(flow, half_width=10.0, points=401):
    """The integral of exp(flow.log_prob) over [-w, w]^2 by the trapezoidal rule (float64)."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = flow.log_prob(grid).exp().reshape(points, points)
    return torch.trapezoid(torch.trapezoid(density, axis), axis).item()


@pytest.mark.parametrize("blocks,batch_norm", [(1, False), (2, True)])
def test_maf_density_integrates_to_one_untrained_and_trained(blocks, batch_norm):
    torch.manual_seed(0)
    flow = cfil.MAF(2, blocks, 64, 2, batch_norm).double().eval()
    assert grid_mass(flow) == pytest.approx(1.0, abs=0.02)

    def banana(n):  # a curved, correlated 2-D density that a Gaussian cannot fit
        a = torch.randn(n, 2, dtype=torch.float64)
        return torch.stack([a[:, 0], 0.5 * a[:, 1] + 0.5 * a[:, 0] ** 2 - 1], -1)

    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    flow.train()
    with torch.no_grad():
        initial_nll = -flow.log_prob(banana(4096)).mean().item()
    for _ in range(300):
        loss = -flow.log_prob(banana(256)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    with torch.no_grad():
        trained_nll = -flow.log_prob(banana(4096)).mean().item()
    assert trained_nll < initial_nll - 0.5, (initial_nll, trained_nll)  # it did learn the data ...
    assert grid_mass(flow) == pytest.approx(1.0, abs=0.02)  # ... and is still a normalised density
    # the masks live in the weights (masked once, gradients masked): after training they are still exactly zero there
    for layer in masked_layers(flow):
        assert (layer.weight[layer.mask == 0] == 0).all() and (layer.weight[layer.mask == 1] != 0).any()


def jacobian(function, z):
    return torch.autograd.functional.jacobian(lambda v: function(v[None])[0], z)


def masked_layers(module):
    return [layer for layer in module.modules() if isinstance(layer, cfil.MaskedLinear)]


def test_made_masks_make_the_jacobian_triangular_in_its_order():
    torch.manual_seed(0)
    degrees = torch.tensor([2, 0, 3, 1])  # a non-trivial order: z_1 first, then z_3, z_0, z_2
    block = cfil.MADE(4, 32, 2, degrees).double()
    with torch.no_grad():  # large random weights, so that no allowed dependence vanishes through dead ReLUs by chance
        for layer in masked_layers(block):
            layer.weight.copy_(0.5 * torch.randn_like(layer.weight) * layer.mask)
    z = torch.randn(4, dtype=torch.float64)
    u_of_z = jacobian(lambda v: block(v)[0], z)
    later = degrees[None, :] > degrees[:, None]  # [i, j]: z_j comes after z_i in the order
    earlier = degrees[None, :] < degrees[:, None]
    assert (u_of_z[later] == 0).all(), u_of_z  # du_i/dz_j == 0 exactly for every later j
    assert (u_of_z[earlier] != 0).all(), u_of_z  # and the masks do not cut the allowed dependences
    # triangular: log|det| is the sum of the diagonal's logs, which is what the block returns
    torch.testing.assert_close(block(z[None])[1][0], torch.linalg.slogdet(u_of_z).logabsdet)
    # in the flow's own ordering the Jacobian is lower triangular
    order = torch.argsort(degrees)
    permuted = u_of_z[order][:, order]
    torch.testing.assert_close(permuted, permuted.tril())


def test_maf_reverses_the_order_between_blocks_and_its_log_det_is_exact():
    torch.manual_seed(0)
    flow = cfil.MAF(4, 3, 32, 2, False).double()
    z = torch.randn(4, dtype=torch.float64)
    made_blocks = [layer for layer in flow.layers if isinstance(layer, cfil.MADE)]
    assert [block.degrees.tolist() for block in made_blocks] == [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]
    v = z[None]
    for block in made_blocks:  # each block is autoregressive in its own order: lower / upper / lower triangular
        block_jacobian = jacobian(lambda w: block(w)[0], v[0])
        order = torch.argsort(block.degrees)
        permuted = block_jacobian[order][:, order]
        torch.testing.assert_close(permuted, permuted.tril())
        assert (torch.diagonal(block_jacobian) != 0).all()
        v = block(v)[0]
    # the composition mixes both directions (no single order any more), yet its log|det| is the sum of the blocks'
    full = jacobian(lambda w: flow(w)[0], z)
    assert full[0, 3] != 0 and full[3, 0] != 0
    torch.testing.assert_close(flow(z[None])[1][0], torch.linalg.slogdet(full).logabsdet)
    # and with the official single block, the whole flow is autoregressive in the sequential order
    single = cfil.MAF(4, 1, 32, 2, False).double()
    single_jacobian = jacobian(lambda w: single(w)[0], z)
    torch.testing.assert_close(single_jacobian, single_jacobian.tril())


def test_coupled_dv_estimator_recovers_the_kl_between_two_gaussians():
    """x = log p_psi - log q_phi trained by dv_loss on samples of P (agent) and Q (expert): -dv_loss -> KL(P || Q)."""
    torch.manual_seed(0)
    mean, std = torch.tensor([1.0, 0.5]), torch.tensor([0.8, 1.2])
    true_kl = 0.5 * ((std**2).sum() + (mean**2).sum() - 2 - torch.log((std**2).prod())).item()  # ~0.706, Q = N(0, I)
    model = cfil.CoupledFlow(2, "nosquash", 1, 64, 2, False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(1000):
        agent, expert = mean + std * torch.randn(256, 2), torch.randn(256, 2)
        x = cfil.cfil_x(model, torch.cat([expert, agent]), "nosquash", 15.0, 6.0)
        loss = cfil.dv_loss(x[:256], x[256:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        agent, expert = mean + std * torch.randn(200_000, 2), torch.randn(200_000, 2)
        estimate = -cfil.dv_loss(model(expert)[0], model(agent)[0]).item()
        # the coupled pair learnt the log ratio itself (up to the DV constant), not just a bound
        x, log_ratio = (
            model(agent)[0],
            (torch.distributions.Normal(mean, std).log_prob(agent) - torch.distributions.Normal(0.0, 1.0).log_prob(agent)).sum(
                -1
            ),
        )
    assert estimate == pytest.approx(true_kl, rel=0.10), (estimate, true_kl)
    assert torch.corrcoef(torch.stack([x, log_ratio]))[0, 1] > 0.95


def test_losses_squash_smooth_and_reward_on_toy_tensors():
    x = torch.tensor([-1e6, -3.0, 0.0, 3.0, 1e6])
    squashed = cfil.squash(x, 15.0, 6.0)
    torch.testing.assert_close(squashed, 6.0 * torch.tanh(x / 15.0))
    assert squashed.abs().max() <= 6.0
    # dv_loss = log mean_e exp(x_e) - mean_a x_a, stable for large x
    x_expert, x_agent = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 3.0])
    expected = np.log(np.mean(np.exp([0.0, 1.0, 2.0]))) - 2.0
    assert cfil.dv_loss(x_expert, x_agent).item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(cfil.dv_loss(torch.tensor([1000.0, 0.0]), x_agent))
    assert cfil.flow_regularizer(torch.tensor([-1.0, -3.0]), torch.tensor([2.0])).item() == pytest.approx(0.0)
    # smoothing: multiplicative uniform noise, within +-beta/2 of each value (plus the 1e-3 offset)
    torch.manual_seed(0)
    z = torch.randn(10_000, 3) * 5
    noisy = cfil.smooth(z, 0.5)
    assert ((noisy - z).abs() <= 0.25 * (z + 1e-3).abs() + 1e-6).all()
    assert (noisy != z).float().mean() > 0.99 and torch.equal(cfil.smooth(z, 0.0), z)
    # numerator: r = -x = log q_phi, the expert flow's log density, unsquashed
    model = cfil.CoupledFlow(3, "numerator", 1, 16, 2, False)
    torch.testing.assert_close(-cfil.cfil_x(model, z, "numerator", 15.0, 6.0), model.expert_flow.log_prob(z))
    # cfil: x = sigma(log p_psi - log q_phi) with p_psi the agent's flow
    model = cfil.CoupledFlow(3, "cfil", 1, 16, 2, False)
    x = cfil.cfil_x(model, z, "cfil", 15.0, 6.0)
    torch.testing.assert_close(x, cfil.squash(model.agent_flow.log_prob(z) - model.expert_flow.log_prob(z), 15.0, 6.0))
    # the reward r = -x, shifted by a so that it is non-negative (the official --tanh_shift)
    args = cfil.Args(mode="s")
    torch.testing.assert_close(cfil.replay_reward(model, z, None, None, args, 0.0), -x)
    shifted = cfil.replay_reward(model, z, None, None, args, 6.0)
    torch.testing.assert_close(shifted, 6.0 - x)
    assert shifted.min() >= 0 and shifted.max() <= 12


def test_density_loss_of_each_variant():
    torch.manual_seed(0)
    expert, agent = torch.randn(8, 3), torch.randn(8, 3) + 1
    model = cfil.CoupledFlow(3, "cfil", 1, 16, 2, False)
    loss, stats = cfil.density_loss(model, expert, agent, "cfil", 15.0, 6.0, 0.5)
    x_expert, x_agent = cfil.cfil_x(model, expert, "cfil", 15.0, 6.0), cfil.cfil_x(model, agent, "cfil", 15.0, 6.0)
    regularizer = -model.agent_flow.log_prob(agent).mean() - model.expert_flow.log_prob(expert).mean()
    torch.testing.assert_close(loss, cfil.dv_loss(x_expert, x_agent) + 0.5 * regularizer)
    torch.testing.assert_close(stats["losses/flow_reg"], regularizer)
    loss, _ = cfil.density_loss(model, expert, agent, "indflow", 15.0, 6.0, 0.5)
    torch.testing.assert_close(loss, regularizer)  # independent maximum likelihood, no coupling
    model = cfil.CoupledFlow(3, "regularnet", 1, 16, 2, False)
    loss, stats = cfil.density_loss(model, expert, agent, "regularnet", 15.0, 6.0, 0.5)
    assert "losses/flow_reg" not in stats
    x_expert, x_agent = (cfil.squash(model.head(model.net(z))[:, 0], 15.0, 6.0) for z in (expert, agent))
    torch.testing.assert_close(loss, cfil.dv_loss(x_expert, x_agent))


def test_under_bf16_autocast_log_densities_and_losses_stay_float32():
    """--bf16 autocasts the flows' hidden matmuls only: u, log|det|, log p, x, the DV loss and the regularizer are
    float32, and the log-densities agree with float32 ones to within bfloat16's rounding of the hidden layers."""
    torch.manual_seed(0)
    model = cfil.CoupledFlow(5, "cfil", 2, 64, 3, True).eval()
    expert, agent = torch.randn(64, 5), torch.randn(64, 5) + 1
    with torch.no_grad():
        exact = model.agent_flow.log_prob(agent)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.agent_flow.layers[0].hidden(agent).dtype == torch.bfloat16  # the matmuls do run in bfloat16
            u, log_det = model.agent_flow(agent)
            log_p = model.agent_flow.log_prob(agent)
    assert u.dtype == log_det.dtype == log_p.dtype == torch.float32
    torch.testing.assert_close(log_p, exact, atol=0.05, rtol=0.01)
    for variant in ("cfil", "regularnet", "indflow", "numerator"):
        model = cfil.CoupledFlow(5, variant, 1, 64, 3, False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, stats = cfil.density_loss(model, expert, agent, variant, 15.0, 6.0, 1.0)
        assert loss.dtype == torch.float32 and all(value.dtype == torch.float32 for value in stats.values()), variant
    rewards = cfil.replay_reward(model, agent[:, :3], agent[:, 3:], agent[:, :3], cfil.Args(), 0.0, bf16=True)
    assert rewards.dtype == torch.float32


def test_density_update_gives_the_expert_the_higher_reward():
    """A few density steps (update_density, as the main loop runs them) on two separable Gaussians, demos around +1.5
    and replay transitions around -1.5: r = -x = log q_phi - log p_psi must rank every expert point above every agent
    point. Swapping the expert and agent batches anywhere in the density step reverses the ranking."""
    torch.manual_seed(0)
    args = cfil.Args(flow_hidden_size=32, flow_hidden_layers=2, density_updates=10, density_batch=64)
    obs_dim, action_dim = 3, 1
    expert_data = 1.5 + 0.5 * torch.randn(500, obs_dim + action_dim)
    rb = cfil.ReplayBuffer(obs_dim, action_dim, 1000, "cpu")
    for row in (-1.5 + 0.5 * torch.randn(500, 2 * obs_dim + action_dim)).numpy():
        rb.add(row[:obs_dim], row[obs_dim : obs_dim + action_dim], 0.0, row[obs_dim + action_dim :], False)
    model = cfil.CoupledFlow(obs_dim + action_dim, "cfil", 1, 32, 2, False).eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.density_lr)
    for _ in range(3):
        stats = cfil.update_density(model, optimizer, expert_data, rb, args)
    assert not model.training and torch.isfinite(stats["losses/density_loss"])
    assert stats["charts/x_agent"] > stats["charts/x_expert"]  # x ~ log d_pi / d_e: high where the agent is
    agent_obs, agent_actions, _, agent_next_obs, _ = rb.sample(500)
    expert_reward = cfil.replay_reward(model, expert_data[:, :obs_dim], expert_data[:, obs_dim:], None, args, 6.0)
    agent_reward = cfil.replay_reward(model, agent_obs, agent_actions, agent_next_obs, args, 6.0)
    assert expert_reward.min() > agent_reward.max(), (expert_reward.min(), agent_reward.max())


@pytest.mark.benchmark
def test_cfil_overhead_over_a_sac_update(capsys):
    """CPU time per learning step of cfil.py over sac.py's at the same SAC settings (cfil.Args() defaults, Hopper-v4
    sizes, one thread): the reward recomputed by the two official-size flows on every SAC minibatch, plus the flows'
    training amortised over --density-update-every steps, against sac_update alone; float32 and --bf16 side by side."""
    env = gym.make("Hopper-v4")
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    args, device = cfil.Args(), torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as benchmark.sh runs it; several threads on a shared 2-core machine only spin
    overheads = {}
    try:
        for bf16 in (False, True) if cfil.bf16_is_fast(device) else (False,):
            torch.manual_seed(0)
            actor = cfil.Actor(env, args.hidden_size, args.log_std_min, args.log_std_max)
            qf, qf_target = (cfil.SoftQEnsemble(obs_dim, action_dim, args.hidden_size) for _ in range(2))
            log_alpha = torch.tensor(np.log(args.alpha), dtype=torch.float32, requires_grad=True)
            optimizers = {"q": cfil.make_optimizer(qf.parameters(), args.q_lr, device)}
            optimizers["actor"] = cfil.make_optimizer(actor.parameters(), args.policy_lr, device)
            optimizers["alpha"] = cfil.make_optimizer([log_alpha], args.q_lr, device)
            rb = cfil.ReplayBuffer(obs_dim, action_dim, 20_000, device)
            for _ in range(10_000):
                rb.add(np.random.randn(obs_dim), np.random.rand(action_dim) * 2 - 1, 0.0, np.random.randn(obs_dim), False)
            expert_data = torch.randn(1000, obs_dim + action_dim)
            model = cfil.CoupledFlow(
                obs_dim + action_dim,
                args.variant,
                args.flow_blocks,
                args.flow_hidden_size,
                args.flow_hidden_layers,
                args.flow_batch_norm,
            ).eval()
            density_optimizer = cfil.make_optimizer(model.parameters(), args.density_lr, device)

            def sac_step(step, with_reward):
                obs, actions, rewards, next_obs, terminations = rb.sample(args.batch_size)
                if with_reward:
                    rewards = cfil.replay_reward(model, obs, actions, next_obs, args, 6.0, bf16)
                batch = (obs, actions, rewards, next_obs, terminations)
                return cfil.sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, step, bf16)

            for step in range(20):
                sac_step(step, True)
            cfil.update_density(model, density_optimizer, expert_data, rb, args, bf16)
            # interleaved rounds, the fastest of each kind: on a shared machine a round is only ever slowed by others' load
            times = {"sac": [], "cfil": [], "density": []}
            for _ in range(6):
                for name, with_reward in (("sac", False), ("cfil", True)):
                    start = time.process_time()
                    for step in range(100):
                        stats = sac_step(step, with_reward)
                    times[name].append((time.process_time() - start) / 100)
                start = time.process_time()
                cfil.update_density(model, density_optimizer, expert_data, rb, args, bf16)
                times["density"].append((time.process_time() - start) / args.density_update_every)
            sac_time, cfil_time, density_time = (min(times[name]) for name in ("sac", "cfil", "density"))
            overheads["bf16" if bf16 else "fp32"] = (cfil_time + density_time - sac_time) / sac_time
            assert all(torch.isfinite(value) for value in stats.values())
            with capsys.disabled():
                print(
                    f"\ncfil.py {'bf16' if bf16 else 'fp32'}: sac_update {sac_time * 1e3:.2f} ms, with the reward "
                    f"{cfil_time * 1e3:.2f} ms, flow training {density_time * 1e3:.3f} ms per step: "
                    f"{overheads['bf16' if bf16 else 'fp32']:.0%} over sac.py"
                )
    finally:
        torch.set_num_threads(threads)
    # the two flows' forward pass alone is a quarter of a SAC update's multiply-adds at these sizes
    assert max(overheads.values()) < 0.35, overheads


@pytest.mark.parametrize(
    "name",
    ["SoftQEnsemble", "Actor", "ReplayBuffer", "soft_q_loss", "policy_loss", "alpha_loss", "sac_update", "bf16_is_fast"]
    + ["make_optimizer", "save_checkpoint", "load_checkpoint"],
)
def test_sac_and_checkpoint_blocks_are_sac_pys(name):
    """The copies stay identical to sac.py's (docs/DESIGN.md): its replay buffer too, whose reward column cfil leaves 0.
    (The shared plumbing: tests/test_shared_blocks.py.)"""
    assert inspect.getsource(getattr(cfil, name)) == inspect.getsource(getattr(sac, name))


def assert_finite_run(workdir, steps=(0, 150, 300)):
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == list(steps)
    for row in rows:
        assert np.isfinite([row["eval_return_mean"], row["eval_return_std"], row["normalized_score"], row["sps"]]).all(), row
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"], summary["mean_sps"]]).all()
    assert summary["final_return"] == pytest.approx(rows[-1]["eval_return_mean"])
    return summary


@pytest.mark.parametrize("variant", ["cfil", "nosquash", "regularnet", "indflow", "indflowns", "numerator"])
def test_smoke_every_variant(workdir, variant):
    run_script("cfil.py", *TINY, "--variant", variant, cwd=workdir)
    assert assert_finite_run(workdir)["args"]["variant"] == variant


@pytest.mark.parametrize("mode", ["s", "ss"])
def test_smoke_state_only_modes_with_batch_norm_and_two_blocks(workdir, mode):
    run_script("cfil.py", *TINY, "--mode", mode, "--flow-blocks", "2", "--flow-batch-norm", cwd=workdir)
    summary = assert_finite_run(workdir)
    assert summary["args"]["mode"] == mode
    assert summary["precision"] == ("bf16-autocast" if cfil.bf16_is_fast(torch.device("cpu")) else "fp32")
    assert summary["device"] == "cpu" and summary["refill_env_steps"] == 0


def test_smoke_float32(workdir):
    run_script("cfil.py", *TINY, "--no-bf16", cwd=workdir)
    summary = assert_finite_run(workdir)
    assert summary["precision"] == "fp32" and summary["args"]["bf16"] is False


def test_smoke_subsampled_demos_tracked_offline(workdir):
    run_script("cfil.py", *TINY, "--subsample-frequency", "20", "--num-expert-trajectories", "2", "--track", cwd=workdir)
    assert assert_finite_run(workdir)["args"]["subsample_frequency"] == 20
    assert list((workdir / "wandb").glob("offline-run-*")), "--track wrote no offline wandb run"


def test_state_only_modes_never_read_the_demo_actions(workdir):
    """Demos without any "actions" array: the state-only modes run as before, the state-action mode cannot."""
    expert = workdir / "expert"
    expert.mkdir()
    (expert / "expert.json").write_text((EXPERTS / "Pendulum-v1" / "expert.json").read_text())
    with np.load(EXPERTS / "Pendulum-v1" / "demos.npz") as demos:
        np.savez_compressed(expert / "demos.npz", **{key: demos[key] for key in demos.files if key != "actions"})
    for mode in ("s", "ss"):
        run_script("cfil.py", *TINY, "--mode", mode, "--expert-path", expert, "--exp-name", f"cfil_{mode}", cwd=workdir)
    for run_dir in run_dirs(workdir):
        assert np.isfinite([row["eval_return_mean"] for row in read_eval_csv(run_dir)]).all()
    result = run_script("cfil.py", *TINY, "--mode", "sa", "--expert-path", expert, cwd=workdir, check=False)
    assert_clean_error(result, "is not a usable expert folder", "actions is not a file", "demos.py --check")


def test_replay_buffer_rows_and_minibatches():
    rb = cfil.ReplayBuffer(3, 2, 4, "cpu")
    for i in range(6):  # wraps around: rows 4 and 5 overwrite rows 0 and 1
        rb.add(np.full(3, i), np.full(2, 10 + i), 0.0, np.full(3, 20 + i), i % 2 == 1)
    assert rb.full and rb.pos == 2 and rb.rows.shape == (4, 3 + 2 + 1 + 3 + 1)
    obs, actions, rewards, next_obs, terminations = rb.sample(256)
    assert obs.shape == (256, 3) and actions.shape == (256, 2) and next_obs.shape == (256, 3) and terminations.shape == (256,)
    assert set(obs[:, 0].tolist()) == {2.0, 3.0, 4.0, 5.0}  # the four newest transitions, each row intact
    torch.testing.assert_close(actions[:, 0], obs[:, 0] + 10)
    torch.testing.assert_close(next_obs[:, 2], obs[:, 0] + 20)
    torch.testing.assert_close(terminations, obs[:, 0] % 2)
    assert (rewards == 0).all()


def test_the_policy_steps_critic_bootstraps_from_the_target_critics_with_the_entropy_term():
    """Alg. 1's policy step (sac_update, the critics' half, on CFIL's rewards r = -x in the batch) by hand: the target
    r + gamma (1 - d) (min_k Q'_k(s', a') - alpha log pi(a'|s')), a' ~ pi(s'), of target critics that differ from the
    online ones; the online critics or the entropy term dropped give another loss. lr 0, no actor step (step 1 of 2)."""
    torch.manual_seed(0)
    env = gym.make("Pendulum-v1")
    actor, qf, qf_target = cfil.Actor(env, 16, -5, 2), cfil.SoftQEnsemble(3, 1, 16), cfil.SoftQEnsemble(3, 1, 16)
    obs, next_obs, actions = torch.randn(8, 3), torch.randn(8, 3), torch.rand(8, 1) * 4 - 2
    model = cfil.CoupledFlow(3, "cfil", 1, 16, 2, False).eval()
    rewards = cfil.replay_reward(model, obs, None, None, cfil.Args(mode="s"), 0.0)
    with torch.no_grad():
        for p in qf_target.parameters():  # target critics far from the online ones
            p.add_(0.3 * torch.randn_like(p))
    batch = (obs, actions, rewards, next_obs, torch.tensor([0.0, 1.0] * 4))
    log_alpha, args = torch.tensor(np.log(0.5)), cfil.Args(gamma=0.9, policy_frequency=2, target_network_frequency=5)

    def by_hand(critic, alpha):
        torch.manual_seed(1)  # the a' ~ pi(s') sac_update draws
        with torch.no_grad():
            next_actions, next_log_pi = actor.get_action(next_obs)
            next_value = critic(next_obs, next_actions).min(0).values - alpha * next_log_pi
            y = rewards + 0.9 * (1 - batch[4]) * next_value
            return ((qf(obs, actions) - y) ** 2).mean(1).sum().item()

    torch.manual_seed(1)
    optimizers = {"q": torch.optim.SGD(qf.parameters(), lr=0.0)}
    stats = cfil.sac_update(batch, actor, qf, qf_target, log_alpha, optimizers, args, 1)
    expected = by_hand(qf_target, 0.5)
    assert stats["losses/qf_loss"].item() == pytest.approx(expected, rel=1e-5)
    for alternative in (by_hand(qf, 0.5), by_hand(qf_target, 0.0)):
        assert abs(alternative - expected) > 1e-2 * expected, (alternative, expected)


def start_and_stop(flags, cwd, rows):
    """cfil.py flags in its own process, stopped by SIGTERM once eval.csv holds `rows` rows: (exit status, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, str(SCRIPTS / "cfil.py"), *map(str, flags)]
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
    """python cleanil/cfil.py <args> in this process; returns the script's globals (its networks and optimisers)."""
    monkeypatch.setattr(signal, "signal", lambda *a, **k: None)  # the run's handlers would outlive it in pytest
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "cfil.py"), *map(str, args)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a run_script process computes
    try:
        return runpy.run_path(str(SCRIPTS / "cfil.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)


def test_checkpoint_rules(workdir, monkeypatch):
    """SIGTERM mid-run: the step finishes, a compact checkpoint (flows included, no replay buffer) is written, exit
    128 + 15 with one line naming --resume; a fresh run refuses to overwrite it; --resume refills the buffer (150 steps,
    no updates), continues every optimiser, rewinds eval.csv to the checkpoint's rows and deletes the checkpoint when it
    finishes; the same checkpoint resumed again gives the same evaluations; other arguments do not fit it."""
    flags = [*TINY, "--refill-steps", "150"]
    path = workdir / "checkpoints" / "Pendulum-v1__cfil__1.pt"
    returncode, stderr = start_and_stop([*flags, "--total-timesteps", "1000000"], workdir, rows=2)
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped at step" in stderr and "--resume" in stderr.splitlines()[-1], stderr
    checkpoint = torch.load(path, weights_only=False)
    step, (run_dir,) = checkpoint["progress"]["global_step"], run_dirs(workdir)
    assert step >= 150 and checkpoint["progress"]["run_name"] == run_dir.name
    assert {"reward_model", "density_optimizer", "q_optimizer"} <= set(checkpoint["state"]) and "rb" not in checkpoint["state"]
    assert path.stat().st_size < 300_000  # networks, flows, optimisers and counters: no replay buffer
    saved = path.read_bytes()

    refused = run_script("cfil.py", *flags, "--total-timesteps", "600", cwd=workdir, check=False)
    assert_clean_error(refused, "holds an interrupted run's checkpoint", "--resume")
    assert run_dirs(workdir) == [run_dir]

    with open(run_dir / "eval.csv", "a") as eval_csv:  # as if killed after evaluating past its checkpoint
        eval_csv.write(f"{step + 150},-1,0,nan,1,1\n")
    total = step + 300
    script = run_in_process([*flags, "--total-timesteps", total, "--resume"], workdir, monkeypatch)
    assert run_dirs(workdir) == [run_dir]  # the same run folder
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == sorted(set(range(0, total + 1, 150)) | {total})
    assert all(b["wall_time"] > a["wall_time"] for a, b in zip(rows, rows[1:]))  # the wall clock continues too
    assert read_summary(run_dir)["refill_env_steps"] == 150 and not path.exists()
    # continued, not restarted: SAC updated at steps 101..total (none while refilling), the flows 10 times every 100
    q_state, density_state = (script["optimizers"][name].state_dict() for name in ("q", "density"))
    assert q_state["state"][0]["step"] == total - 100 and density_state["state"][0]["step"] == 10 * (total // 100)
    assert_clean_error(run_script("cfil.py", *flags, "--resume", cwd=workdir, check=False), "no checkpoint", path.name)

    path.write_bytes(saved)  # the same checkpoint (networks, flows, RNG states) continues the same way
    (run_dir / "summary.json").unlink()
    run_script("cfil.py", *flags, "--total-timesteps", total, "--resume", cwd=workdir)
    again = read_eval_csv(run_dir)
    assert [(row["global_step"], row["eval_return_mean"]) for row in again] == [
        (row["global_step"], row["eval_return_mean"]) for row in rows
    ]

    path.write_bytes(saved)
    result = run_script("cfil.py", *flags, "--mode", "s", "--total-timesteps", total, "--resume", cwd=workdir, check=False)
    assert_clean_error(result, "does not fit these arguments")


def test_bad_input(workdir):
    assert_clean_error(run_script("cfil.py", "--env-id", "CartPole-v1", cwd=workdir, check=False), "continuous")
    assert_clean_error(
        run_script("cfil.py", *TINY, "--num-expert-trajectories", "1000", cwd=workdir, check=False),
        "--num-expert-trajectories 1000 is not between 1 and its",
        "python cleanil/demos.py --check",
    )
    assert_clean_error(run_script("cfil.py", *TINY, "--squash-bound", "0", cwd=workdir, check=False), "--squash-bound")
    assert_clean_error(run_script("cfil.py", *TINY, "--total-timesteps", "100", cwd=workdir, check=False), "--learning-starts")
    assert_clean_error(
        run_script("cfil.py", *TINY, "--resume", cwd=workdir, check=False),
        "--resume found no checkpoint at checkpoints/Pendulum-v1__cfil__1.pt",
        "without --resume",
    )
    assert_clean_error(
        run_script("cfil.py", *TINY, "--expert-path", workdir / "none", cwd=workdir, check=False),
        f"{workdir / 'none'} is not a usable expert folder",
        f"python cleanil/demos.py --check {workdir / 'none'}",
    )
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())


def test_main_rewards_the_policy_step_with_the_shifted_negated_x(workdir, monkeypatch):
    """The last minibatch main fed sac_update (the script's globals after a short run): its rewards are r = a - x,
    x = sigma(log p_psi - log q_phi) of the current flows at the minibatch's (s, a), a = --squash-bound, so r in
    [0, 2a]. Main computes them itself before the SAC step, so only a run shows their sign."""
    script = run_in_process([*TINY, "--no-bf16"], workdir, monkeypatch)
    args, (obs, actions, rewards, _, _) = script["args"], script["batch"]
    assert args.variant == "cfil" and args.reward_shift and args.mode == "sa"
    with torch.no_grad():
        x = cfil.squash(script["reward_model"](torch.cat([obs, actions], -1))[0], args.squash_scale, args.squash_bound)
    torch.testing.assert_close(rewards, args.squash_bound - x)
    assert x.abs().max() > 1e-3 and 0 <= rewards.min() and rewards.max() <= 2 * args.squash_bound


@pytest.mark.learning
def test_cfil_imitates_pendulum_from_one_trajectory(workdir):
    """One expert trajectory (200 transitions), the paper's flows, squasher, smoothing and regularizer; only the run is
    short, with the flows trained 4x as often (every 250 steps) so that the reward is shaped within 8000 steps.
    Seeds 1-4 measured: best 0.97 / 1.05 / 0.93 / 1.00, final 0.97 / 1.05 / 0.62 / 0.75 (1.0 = the expert)."""
    run_script(
        "cfil.py",
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        "8000",
        "--learning-starts",
        "1000",
        "--density-update-every",
        "250",
        "--eval-frequency",
        "2000",
        "--eval-episodes",
        "5",
        cwd=workdir,
    )
    run_dir = run_dirs(workdir)[0]
    rows = read_eval_csv(run_dir)
    assert rows[0]["normalized_score"] < 0.3, rows
    assert max(row["normalized_score"] for row in rows) >= 0.8 and rows[-1]["normalized_score"] >= 0.5, rows
    assert read_summary(run_dir)["best_normalized_score"] >= 0.8


def test_flow_features_keep_the_official_270_humanoid_dims():
    """--flow-features auto on Humanoid-v4: the dims the official code drops (rewarder.py) are the contact forces and
    those zero by construction (world body's cinert and cvel, the free joint's actuator forces); s and s' alike."""
    env = gym.make("Humanoid-v4")
    observations = [env.reset(seed=0)[0]]
    for _ in range(60):
        observations.append(env.step(env.action_space.sample())[0])
    observations = torch.as_tensor(np.array(observations), dtype=torch.float32)
    dims = cfil.flow_observation_dims("Humanoid-v4", 376, "auto")
    assert len(dims) == len(set(dims.tolist())) == 270
    dropped = sorted(set(range(376)) - set(dims.tolist()))
    by_construction = [*range(45, 55), *range(185, 191), *range(269, 275)]
    assert dropped == by_construction + list(range(292, 376))
    assert (observations[:, by_construction] == 0).all()
    assert (observations[:, 292:] != 0).any()  # the contact forces do move: they are dropped as the official code does
    z = cfil.flow_input("ss", observations[:-1], None, observations[1:], dims)
    assert z.shape == (60, 540) and torch.equal(z[:, 270:], observations[1:, dims])
    assert torch.equal(cfil.flow_input("sa", observations, observations[:, :17], None, dims)[:, :270], observations[:, dims])
    assert cfil.flow_observation_dims("Humanoid-v4", 376, "all") is None
    assert (
        cfil.flow_observation_dims("Hopper-v4", 11, "auto") is None
        and cfil.flow_observation_dims("Ant-v4", 27, "auto") is None
    )
    assert cfil.flow_observation_dims("Ant-v4", 111, "auto").tolist() == list(range(27))


@pytest.mark.parametrize("features, flow_dim", [("auto", 270 + 17), ("all", 376 + 17)])
def test_flow_features_reach_the_flows_of_a_humanoid_run(workdir, monkeypatch, features, flow_dim):
    """A Humanoid-v4 run on a folder of one's own demos: the flows are built on, trained on and reward the dims chosen."""
    rng = np.random.default_rng(0)
    folder = workdir / "humanoid"
    folder.mkdir()
    observations = rng.normal(size=(400, 376)).astype(np.float32)
    np.savez_compressed(
        folder / "demos.npz",
        observations=observations,
        actions=rng.uniform(-0.4, 0.4, size=(400, 17)).astype(np.float32),
        rewards=np.ones(400, dtype=np.float32),
        next_observations=np.roll(observations, -1, 0),
        terminations=np.zeros(400, dtype=bool),
        truncations=np.zeros(400, dtype=bool),
        episode_starts=np.array([0, 200]),
    )
    info = {"env_id": "Humanoid-v4", "expert_return_mean": 5000, "random_return_mean": 100}
    (folder / "expert.json").write_text(json.dumps(info))
    tiny = [arg if arg != "Pendulum-v1" else "Humanoid-v4" for arg in TINY]
    script = run_in_process([*tiny, "--expert-path", folder, "--flow-features", features], workdir, monkeypatch)
    assert read_summary(run_dirs(workdir)[0])["args"]["flow_features"] == features
    assert script["expert_data"].shape[1] == flow_dim
    assert script["reward_model"].expert_flow.layers[0].hidden[0].weight.shape[1] == flow_dim
