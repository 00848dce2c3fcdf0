"""ilpo.py: its latent forward model splits a toy system's two actions
between two latents and its latent policy picks the expert's, L_exp leaves the generator alone, the remapping learns
which real action a latent stands for, it never reads the expert's actions (demos whose actions are NaN give the very
same run), every flag path end to end, bad input (a continuous-action env, a missing expert), and learning CartPole-v1
from state-only demos. The shared plumbing is tests/test_shared_blocks.py's."""

import re
import shutil

import ilpo
import numpy as np
import pytest
import torch

from conftest import EXPERTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script


def toy_transitions(n, p_up):
    """s' = s + 1 (action 0) or s' = s - 1 (action 1) on a 2-D state; the expert moves up with probability p_up(s)."""
    s = 4 * torch.rand(n, 2) - 2
    actions = (torch.rand(n) >= p_up(s)).long()
    return s, actions, torch.where(actions[:, None] == 0, 1.0, -1.0).expand(-1, 2)


def train_latent_model(s, delta, steps=1500):
    torch.manual_seed(0)
    model = ilpo.LatentModel(obs_dim=2, num_latent_actions=2, hidden_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        index = torch.randint(0, len(s), (256,))
        logits, predictions = model(s[index])
        loss = ilpo.min_loss(predictions, delta[index]) + ilpo.expected_loss(logits, predictions, delta[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_latent_model_assigns_the_two_transitions_of_a_toy_system_to_different_latents():
    # a stochastic expert (up with probability 0.7 in every state): both transitions occur everywhere
    torch.manual_seed(0)
    p_up = lambda s: torch.full((len(s),), 0.7)
    model = train_latent_model(*toy_transitions(4096, p_up)[::2])
    s, actions, delta = toy_transitions(1000, p_up)  # held out
    with torch.no_grad():
        logits, predictions = model(s)
        latents = ilpo.infer_latent(predictions, delta)
    # one latent for s + 1, the other for s - 1, whatever the state, and each latent predicts its transition
    up, down = latents[actions == 0], latents[actions == 1]
    assert (up == up[0]).all() and (down == down[0]).all() and up[0] != down[0], (up, down)
    torch.testing.assert_close(predictions[:, up[0]], torch.ones(1000, 2), atol=0.1, rtol=0)
    torch.testing.assert_close(predictions[:, down[0]], -torch.ones(1000, 2), atol=0.1, rtol=0)
    # L_exp's minimiser: pi(z|s) is the probability that the expert makes z's transition
    p_latent_up = torch.softmax(logits, -1)[:, up[0]]
    assert abs(p_latent_up.mean() - 0.7) < 0.03 and (p_latent_up - 0.7).abs().max() < 0.15, p_latent_up


def test_latent_policy_picks_the_latent_of_the_experts_transition():
    # a deterministic expert that moves towards s_0 = 0: pi(z|s), trained by L_exp alone, imitates it in latent space
    torch.manual_seed(0)
    p_up = lambda s: (s[:, 0] < 0).float()
    model = train_latent_model(*toy_transitions(4096, p_up)[::2])
    s, actions, delta = toy_transitions(1000, p_up)
    with torch.no_grad():
        logits, predictions = model(s)
        latents = ilpo.infer_latent(predictions, delta)
    up, down = latents[actions == 0], latents[actions == 1]
    assert (up == up[0]).all() and (down == down[0]).all() and up[0] != down[0], (up, down)
    assert (logits.argmax(-1) == latents).float().mean() > 0.97


def test_expected_loss_trains_the_latent_policy_not_the_generator():
    torch.manual_seed(0)
    logits, predictions = torch.zeros(4, 2, requires_grad=True), torch.randn(4, 2, 3, requires_grad=True)
    delta = predictions[:, 1].detach()
    loss = ilpo.expected_loss(logits, predictions, delta)
    # uniform pi: the expected prediction is the mean of the two; its squared error to the second one
    expected = ((predictions[:, 0] - predictions[:, 1]) / 2).pow(2).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert predictions.grad is None and logits.grad is not None
    assert (logits.grad[:, 1] < 0).all()  # gradient descent raises pi(z = 1 | s), the latent that explains delta
    # L_min is the error of the best latent
    errors = ilpo.prediction_errors(predictions.detach(), delta)
    assert ilpo.min_loss(predictions.detach(), delta).item() == pytest.approx(errors.min(-1).values.mean().item())
    assert ilpo.min_loss(predictions.detach(), delta).item() == pytest.approx(0.0, abs=1e-7)


def test_remapping_learns_which_real_action_each_latent_stands_for():
    # latent 0 is real action 1 and latent 1 is real action 0 wherever s is: cross-entropy on (s, z) -> a finds it
    torch.manual_seed(0)
    remap = ilpo.RemapNetwork(obs_dim=2, num_latent_actions=2, num_actions=2, hidden_size=32)
    optimizer = torch.optim.Adam(remap.parameters(), lr=2e-3)
    for _ in range(300):
        s, z = torch.randn(32, 2), torch.randint(0, 2, (32,))
        loss = ilpo.remap_loss(remap(s, z), 1 - z)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    s, z = torch.randn(1000, 2), torch.randint(0, 2, (1000,))
    with torch.no_grad():
        assert torch.equal(remap(s, z).argmax(-1), 1 - z)


def test_expert_actions_are_not_among_the_keys_read():
    assert "actions" not in ilpo.DEMO_KEYS


COMMON = [
    "--env-id",
    "CartPole-v1",
    "--total-timesteps",
    300,
    "--eval-frequency",
    100,
    "--eval-episodes",
    2,
    "--num-expert-trajectories",
    2,
    "--latent-gradient-steps",
    50,
    "--remap-batch-size",
    16,
]
SMOKE = {
    "default-video": ["--capture-video"],
    "three-latents-subsample-track": ["--num-latent-actions", 3, "--subsample-frequency", 4, "--track"],
    "no-normalize-greedy": ["--no-normalize-observations", "--exploration-epsilon", 0, "--remap-updates-per-step", 2],
}


def step1_report(stdout):
    match = re.search(r"L_min (\S+), L_exp (\S+), demo transitions per latent \[(.*)\], latent policy accuracy (\S+)", stdout)
    return [float(match[1]), float(match[2]), float(match[4])], [float(u) for u in match[3].split(",")]


@pytest.mark.parametrize("flags", SMOKE.values(), ids=SMOKE.keys())
def test_smoke(workdir, flags):
    result = run_script("ilpo.py", *COMMON, *flags, cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    assert [row["global_step"] for row in rows] == [0, 100, 200, 300]
    assert all(np.isfinite(list(row.values())).all() for row in rows), rows
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"], summary["mean_sps"]]).all(), summary
    assert summary["args"]["subsample_frequency"] == (
        flags[flags.index("--subsample-frequency") + 1] if "--subsample-frequency" in flags else 1
    )
    losses, usage = step1_report(result.stdout)
    assert np.isfinite(losses).all() and len(usage) == (3 if "--num-latent-actions" in flags else 2)
    assert sum(usage) == pytest.approx(1.0, abs=0.01)
    if "--track" in flags:
        assert list((workdir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    if "--capture-video" in flags:  # the first episode of each of the 4 evaluations
        assert len(list((workdir / "videos").rglob("*.mp4"))) == 4, "no video recorded"


def test_expert_actions_are_never_read(workdir):
    """Demos whose actions are NaN (of the wrong dtype, even) give exactly the run the real demos give."""
    expert_dir = workdir / "nan-actions"
    shutil.copytree(EXPERTS / "CartPole-v1", expert_dir)
    with np.load(expert_dir / "demos.npz") as npz:
        demos = {key: npz[key] for key in npz.files}
    np.savez_compressed(
        expert_dir / "demos.npz", **{**demos, "actions": np.full(demos["actions"].shape, np.nan, dtype=np.float32)}
    )
    results = []
    for name, path in (("real", EXPERTS / "CartPole-v1"), ("nan", expert_dir)):
        result = run_script("ilpo.py", *COMMON, "--expert-path", path, "--exp-name", name, cwd=workdir)
        (run_dir,) = [d for d in run_dirs(workdir) if f"__{name}__" in d.name]
        results.append(
            [value for row in read_eval_csv(run_dir) for value in (row["global_step"], row["eval_return_mean"])]
            + step1_report(result.stdout)[0]
        )
    assert results[0] == results[1] and np.isfinite(results[1]).all(), results


def test_bad_input_is_one_clear_sentence(workdir):
    result = run_script("ilpo.py", "--env-id", "Pendulum-v1", cwd=workdir, check=False)
    assert_clean_error(result, "ilpo.py needs discrete actions", "Pendulum-v1", "use bco.py or gaifo.py")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = run_script(
        "ilpo.py", "--env-id", "MountainCar-v0", "--expert-path", workdir / "nowhere", cwd=workdir, check=False
    )
    assert_clean_error(result, "is not a usable expert folder", f"python cleanil/demos.py --check {workdir / 'nowhere'}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (workdir / "runs").exists()


@pytest.mark.learning
def test_ilpo_cartpole_learns_from_observations_only(workdir):
    # step 1 for 2000 gradient steps, then 1500 steps of remapping (500 from step 500 on with seeds 1-3)
    run_script(
        "ilpo.py",
        "--env-id",
        "CartPole-v1",
        "--latent-gradient-steps",
        2000,
        "--total-timesteps",
        1500,
        "--eval-frequency",
        500,
        cwd=workdir,
    )
    rows = read_eval_csv(run_dirs(workdir)[0])
    assert rows[-1]["eval_return_mean"] >= 400, rows
