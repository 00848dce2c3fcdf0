"""pmi_il.py: the InfoNCE critic recovers a known PMI (cosine and dot-product scores), the cosine score's bound and
scale invariance, the rewards and which side (expert or agent) each negative comes from, both top-1 accuracies (in
batch, and among the states reachable by replaying each action), GAE and PPO losses on toy tensors, every flag path end
to end, expert actions never read, bad input, and learning CartPole-v1 (defaults) and Acrobot-v1 (the per-step cost)
from state-only demos."""

import inspect
import json
import math
import runpy
import shutil
import sys
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pmi_il
import pytest
import torch
import torch.nn.functional as F

from conftest import EXPERTS, SCRIPTS, assert_clean_error, read_eval_csv, read_summary, run_dirs, run_script


def test_demos_are_read_without_actions():
    assert "actions" not in pmi_il.DEMO_KEYS
    main = inspect.getsource(pmi_il).split('if __name__ == "__main__":')[1]
    assert '"actions"' not in main and "'actions'" not in main


def correlated_gaussians(n, rho, generator):
    """x ~ N(0, 1), y = rho x + sqrt(1 - rho^2) eps: a 2-D Gaussian with correlation rho."""
    x = torch.randn(n, 1, generator=generator)
    return x, rho * x + np.sqrt(1 - rho**2) * torch.randn(n, 1, generator=generator)


def gaussian_pmi(x, y, rho):
    """log p(y|x) / p(y) in closed form: N(y; rho x, 1 - rho^2) over N(y; 0, 1)."""
    v = 1 - rho**2
    return (-0.5 * np.log(v) - (y - rho * x) ** 2 / (2 * v) + y**2 / 2).squeeze(-1)


@pytest.mark.parametrize("score, tau", [("cosine", 0.1), ("dot", 1.0)])
def test_infonce_critic_recovers_the_pmi_of_correlated_gaussians(score, tau):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    rho, batch, num_negatives = 0.8, 256, 64
    critic = pmi_il.PMICritic(1, 64, 16, score)
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)
    arange = torch.arange(batch)
    for _ in range(1000):
        x, y = correlated_gaussians(batch, rho, generator)
        logits = critic.phi2(x) @ critic.phi1(y).T / tau
        negative_index = torch.rand(batch, batch - 1, generator=generator).argsort(1)[:, :num_negatives]
        negative_index += negative_index >= arange[:, None]
        loss = pmi_il.infonce_loss(logits.diagonal(), logits.gather(1, negative_index))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        x, y = correlated_gaussians(2000, rho, generator)
        _, y_marginal = correlated_gaussians(4096, rho, generator)
        log_f = pmi_il.pmi_reward(critic.phi1(y), critic.phi2(x), tau)
        true_pmi = gaussian_pmi(x, y, rho)
        # log f = PMI + c(x): up to a constant at each x (InfoNCE leaves c(x) free)
        for x0 in (-1.5, -0.5, 0.0, 0.7, 1.5):
            xs = torch.full((500, 1), x0)
            ys = rho * xs + torch.randn(500, 1, generator=generator)
            r = pmi_il.pmi_reward(critic.phi1(ys), critic.phi2(xs), tau)
            assert np.corrcoef(r.numpy(), gaussian_pmi(xs, ys, rho).numpy())[0, 1] > 0.9, x0
        if score == "dot":  # across x as well here, by luck: InfoNCE leaves c(x) free (the cosine critic's varies: 0.66)
            assert np.corrcoef(log_f.numpy(), true_pmi.numpy())[0, 1] > 0.9
        # against many marginal negatives the softmax reward cancels c(x): the PMI itself, constant included
        estimate = pmi_il.softmax_reward(log_f, critic.phi2(x) @ critic.phi1(y_marginal).T / tau, 1.0) + np.log(4096 + 1)
    assert np.corrcoef(estimate.numpy(), true_pmi.numpy())[0, 1] > 0.95
    assert (estimate - true_pmi).abs().mean() < 0.2
    assert estimate.mean() == pytest.approx(-0.5 * np.log(1 - rho**2), abs=0.1)  # E[PMI] = I(x; y)


def test_infonce_loss_is_cross_entropy_on_the_positive():
    torch.manual_seed(0)
    positive, negative = torch.randn(8), torch.randn(8, 5)
    expected = F.cross_entropy(torch.cat([positive[:, None], negative], 1), torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(pmi_il.infonce_loss(positive, negative), expected)
    # a critic that tells nothing apart sits at log(K + 1), the bound I >= log(K + 1) - L of CPC Sec. 2.3 at 0
    assert float(pmi_il.infonce_loss(torch.zeros(4), torch.zeros(4, 7))) == pytest.approx(np.log(8))


def test_pmi_and_softmax_rewards():
    torch.manual_seed(0)
    phi_next, phi_obs = torch.randn(6, 3), torch.randn(6, 3)
    torch.testing.assert_close(pmi_il.pmi_reward(phi_next, phi_obs, 0.5), (phi_next * phi_obs).sum(-1) / 0.5)
    positive, negative = torch.randn(6), torch.randn(6, 9)
    reward = pmi_il.softmax_reward(positive, negative, 1.0)
    candidates = torch.cat([positive[:, None], negative], 1)
    torch.testing.assert_close(reward, positive - torch.logsumexp(candidates, 1))
    assert (reward <= 0).all()
    # shifted by log(K + 1): log f(s, s') - log mean f over the true next state and its negatives, 0 at chance
    torch.testing.assert_close(reward + np.log(10), positive - torch.log(candidates.exp().mean(1)))
    torch.testing.assert_close(pmi_il.softmax_reward(torch.zeros(3), torch.zeros(3, 9), 1.0), torch.full((3,), -np.log(10)))
    # the temperature divides the logits; a hot softmax flattens every reward towards 0
    torch.testing.assert_close(
        pmi_il.softmax_reward(positive, negative, 2.0), pmi_il.softmax_reward(positive / 2, negative / 2, 1.0)
    )
    assert (pmi_il.softmax_reward(positive, negative, 1e6) + np.log(10)).abs().max() < 1e-4


class IdentityCritic:
    """phi1 = phi2 = identity: log f(s, s') = s'^T s / tau, known in closed form."""

    phi1 = phi2 = staticmethod(lambda x: x)


def reward_args(**flags):
    defaults = {"reward": "softmax", "negatives": "expert", "num_negatives": 4, "tau": 0.5, "temperature": 1.0}
    return SimpleNamespace(**{**defaults, "reward_shift": False, **flags})


def test_learned_reward_takes_each_negative_from_its_side():
    """Every expert next state is u, every agent next state v (so which ones are drawn does not matter): the softmax
    reward of each s' against K = 4 negatives is known for expert, agent and mixed negatives; swapping the sides, or
    drawing the agent's negatives from the expert's, changes it."""
    torch.manual_seed(0)
    obs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v, u = torch.tensor([0.5, 0.25]), torch.tensor([-1.0, 0.5])
    next_obs, expert_next = v.expand(3, 2), u.expand(7, 2)
    positive, expert_logit = obs @ v / 0.5, obs @ u / 0.5  # [3] each; the agent's negatives score as the positive
    critic = IdentityCritic()

    def expected(num_expert):
        negatives = [expert_logit[:, None].expand(3, num_expert), positive[:, None].expand(3, 4 - num_expert)]
        return positive - torch.logsumexp(torch.cat([positive[:, None], *negatives], 1), 1)

    for negatives, num_expert in (("expert", 4), ("agent", 0), ("mixed", 2)):
        reward = pmi_il.learned_reward(critic, obs, next_obs, expert_next, reward_args(negatives=negatives))
        torch.testing.assert_close(reward, expected(num_expert))
    assert not torch.allclose(expected(4), expected(0))  # the sides are told apart
    torch.testing.assert_close(expected(0), torch.full((3,), -np.log(5)))  # s' no likelier than the agent's own
    shifted = pmi_il.learned_reward(critic, obs, next_obs, expert_next, reward_args(reward_shift=True))
    torch.testing.assert_close(shifted, expected(4) + np.log(5))
    torch.testing.assert_close(pmi_il.learned_reward(critic, obs, next_obs, expert_next, reward_args(reward="pmi")), positive)
    # a temperature divides every logit
    hot = pmi_il.learned_reward(critic, obs, next_obs, expert_next, reward_args(temperature=2.0))
    torch.testing.assert_close(hot, pmi_il.softmax_reward(positive / 2, expert_logit[:, None].expand(3, 4) / 2, 1.0))


def test_cosine_score_is_bounded_by_one_over_tau_and_blind_to_the_embeddings_scale():
    torch.manual_seed(0)
    obs, next_obs = 5 * torch.randn(200, 3), 5 * torch.randn(200, 3)
    scores = {}
    for score in ("cosine", "dot"):
        critic = pmi_il.PMICritic(3, 16, 8, score)
        before = pmi_il.pmi_reward(critic.phi1(next_obs), critic.phi2(obs), 0.1)
        with torch.no_grad():  # the towers' last layers scaled by 7: every embedding 7 times longer
            for tower in (critic.next_tower, critic.obs_tower):
                tower[-1].weight.mul_(7.0)
                tower[-1].bias.mul_(7.0)
        scores[score] = before, pmi_il.pmi_reward(critic.phi1(next_obs), critic.phi2(obs), 0.1)
    before, after = scores["cosine"]
    assert before.abs().max() <= 1 / 0.1 + 1e-5 and before.abs().max() > 0.5 / 0.1
    torch.testing.assert_close(after, before)
    # the dot product has no bound: the same scaling multiplies it by 49
    before, after = scores["dot"]
    torch.testing.assert_close(after, 49 * before, rtol=1e-3, atol=1e-3)
    assert after.abs().max() > 1 / 0.1


def test_top1_in_batch():
    embedding = torch.eye(5)
    assert float(pmi_il.top1_in_batch(embedding, embedding)) == 1.0
    # next states permuted: only the fixed points of the permutation are still ranked first for their state
    permutation = torch.tensor([0, 2, 1, 3, 4])
    assert float(pmi_il.top1_in_batch(embedding, embedding[permutation])) == pytest.approx(3 / 5)


def test_top1_reachable_shares_ties():
    scores = torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    # row 0: a hit; row 1: a tie of 2 at the top shares the hit; row 2: a miss
    assert float(pmi_il.top1_reachable(scores, torch.tensor([0, 0, 0]))) == pytest.approx((1 + 1 / 2 + 0) / 3)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0"])
def test_reachable_next_states_recover_the_expert_action(env_id):
    """Replaying every action from the restored state of a demo's s_t reproduces its s_{t+1} exactly for one action,
    the one the expert took (the test reads the demo's actions; the script never does). A critic that scores the true
    s' highest gets top-1 1.0, a constant critic chance 1 / A, a critic that prefers another action 0."""
    with np.load(EXPERTS / env_id / "demos.npz") as demos:
        observations, next_observations, actions = (
            demos[key][:300] for key in ("observations", "next_observations", "actions")
        )
    env = gym.make(env_id)
    candidates, true_index = pmi_il.reachable_next_observations(env, observations, next_observations)
    num_actions = int(env.action_space.n)
    assert candidates.shape == (300, num_actions, *observations.shape[1:])
    np.testing.assert_array_equal(true_index, actions)
    np.testing.assert_allclose(candidates[np.arange(300), true_index], next_observations, atol=1e-5)
    # the other actions lead elsewhere: Eq. 20 asks the critic to tell them apart
    others = np.abs(candidates - next_observations[:, None]).max(-1)[np.arange(num_actions) != true_index[:, None]]
    assert others.min() > 1e-4
    true_index = torch.as_tensor(true_index)
    oracle = -torch.as_tensor(np.abs(candidates - next_observations[:, None]).sum(-1))  # [N, A], the true s' closest
    assert float(pmi_il.top1_reachable(oracle, true_index)) == 1.0
    assert float(pmi_il.top1_reachable(torch.zeros(300, num_actions), true_index)) == pytest.approx(1 / num_actions)
    wrong = F.one_hot((true_index + 1) % num_actions, num_actions).float()
    assert float(pmi_il.top1_reachable(wrong, true_index)) == 0.0
    # a recorded s' that no action reaches (another env's data) is flagged -1, not matched to the nearest replay
    _, unmatched = pmi_il.reachable_next_observations(env, observations, next_observations + 0.01)
    assert (unmatched == -1).all()


def test_reachable_next_states_need_discrete_actions_and_a_restorable_state():
    assert pmi_il.reachable_next_observations(gym.make("Pendulum-v1"), np.zeros((2, 3)), np.zeros((2, 3))) == (None, None)
    assert pmi_il.reachable_next_observations(gym.make("FrozenLake-v1"), np.zeros((2,)), np.zeros((2,))) == (None, None)


def test_logit_margin_and_the_softmax_rewards_linear_regime():
    embedding = torch.eye(4) * 3.0
    # true next states at logit 9, the 3 others at 0, tau 0.5 doubles every logit
    assert float(pmi_il.logit_margin(embedding, embedding, 1.0)) == pytest.approx(9.0)
    assert float(pmi_il.logit_margin(embedding, embedding, 0.5)) == pytest.approx(18.0)
    torch.manual_seed(0)
    positive, negative = 300 * torch.randn(6), 300 * torch.randn(6, 64)
    # a margin of hundreds of logits saturates the T = 1 log-softmax: 0 or far below, nothing in between
    saturated = pmi_il.softmax_reward(positive, negative, 1.0)
    assert ((saturated > -1e-3) | (saturated < -10)).all()
    # at T of the margin's order: a cost of log(K + 1), less the PMI estimate log f - mean_j log f_j over T
    temperature = 1e4
    linear = -np.log(65) + (positive - torch.cat([positive[:, None], negative], 1).mean(1)) / temperature
    torch.testing.assert_close(pmi_il.softmax_reward(positive, negative, temperature), linear, atol=2e-3, rtol=0)


def test_gae_bootstraps_truncations_not_terminations():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [2.0], [0.0], [3.0]])
    values = torch.tensor([[0.5], [0.25], [9.0], [1.0]])
    next_values = torch.tensor([[4.0], [7.0], [9.0], [2.0]])
    terminations = torch.tensor([[0.0], [1.0], [0.0], [0.0]])  # t = 1 terminates; t = 2 is the autoreset step
    advantages = pmi_il.gae(rewards, values, next_values, terminations, terminations, gamma, lam)
    assert float(advantages[3, 0]) == pytest.approx(3 + gamma * 2 - 1)  # the rollout's end bootstraps from V(s')
    assert float(advantages[1, 0]) == pytest.approx(2 - 0.25)  # a termination does not
    assert float(advantages[0, 0]) == pytest.approx(1 + gamma * 4 - 0.5 + gamma * lam * (2 - 0.25))
    truncated = pmi_il.gae(rewards, values, next_values, torch.zeros_like(terminations), terminations, gamma, lam)
    assert float(truncated[1, 0]) == pytest.approx(2 + gamma * 7 - 0.25)  # a truncation bootstraps, the sum still stops


def test_ppo_loss_clips_the_ratio_and_adds_the_entropy_bonus():
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    log_ratio = torch.log(torch.tensor([1.1, 1.1, 1.5, 0.5])).requires_grad_(True)
    entropy = torch.tensor([0.3, 0.3, 0.3, 0.3])
    loss = pmi_il.ppo_loss(log_ratio, advantages, entropy, 0.2, 0.1)
    # min(rho A, clip(rho, 0.8, 1.2) A), the pessimistic bound: 1.1, -1.1, then the clipped 1.2 (< 1.5) and -0.8 (< -0.5)
    expected = -(1.1 - 1.1 + 1.2 - 0.8) / 4 - 0.1 * 0.3
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # the clipped terms give no gradient, so the policy is not pushed further outside the trust region
    assert log_ratio.grad[2] == log_ratio.grad[3] == 0 and log_ratio.grad[0] != 0 and log_ratio.grad[1] != 0
    assert float(pmi_il.ppo_loss(torch.zeros(4), advantages, entropy, 0.2, 0.0)) == pytest.approx(0.0)


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
    "--num-heldout-trajectories",
    1,
    "--critic-steps",
    50,
    "--critic-batch-size",
    64,
    "--num-negatives",
    16,
    "--update-epochs",
    2,
]
SMOKE = {
    "pmi": ["--env-id", "CartPole-v1", "--reward", "pmi"],
    "softmax-expert": ["--env-id", "CartPole-v1", "--reward", "softmax", "--negatives", "expert"],
    "softmax-agent-subsample-track": [
        "--env-id",
        "CartPole-v1",
        "--reward",
        "softmax",
        "--negatives",
        "agent",
        "--subsample-frequency",
        4,
        "--track",
    ],
    "softmax-mixed-temperature-noshift": [
        "--env-id",
        "CartPole-v1",
        "--reward",
        "softmax",
        "--negatives",
        "mixed",
        "--temperature",
        0.5,
        "--tau",
        0.5,
        "--no-reward-shift",
    ],
    "continuous-pmi-track": ["--env-id", "Pendulum-v1", "--reward", "pmi", "--track"],
    "continuous-mixed-subsample": [
        "--env-id",
        "Pendulum-v1",
        "--reward",
        "softmax",
        "--negatives",
        "mixed",
        "--subsample-frequency",
        5,
        "--no-normalize-observations",
    ],
    "video-no-anneal-no-norm-adv": ["--env-id", "CartPole-v1", "--capture-video", "--no-anneal-lr", "--no-norm-adv"],
    "dot-score": ["--env-id", "CartPole-v1", "--critic-score", "dot", "--tau", 1.0, "--temperature", 100],
}


def flag(flags, name, default):
    return flags[flags.index(name) + 1] if name in flags else default


@pytest.mark.parametrize("flags", SMOKE.values(), ids=SMOKE.keys())
def test_smoke(workdir, flags):
    run_script("pmi_il.py", *flags, *COMMON, cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    rows = read_eval_csv(run_dir)
    steps = [row["global_step"] for row in rows]
    # the budget is an upper bound: 3 iterations of 2 x 100 env steps, less the autoreset steps
    assert steps[0] == 0 and 400 <= steps[-1] <= 600 and len(rows) >= 3 and (np.diff(steps) > 0).all(), steps
    assert all(np.isfinite(list(row.values())).all() for row in rows), rows
    summary = read_summary(run_dir)
    assert np.isfinite([summary["final_return"], summary["final_normalized_score"], summary["mean_sps"]]).all(), summary
    args = summary["args"]
    assert (args["reward"], args["negatives"], args["subsample_frequency"], args["reward_shift"]) == (
        flag(flags, "--reward", "softmax"),
        flag(flags, "--negatives", "expert"),
        flag(flags, "--subsample-frequency", 1),
        "--no-reward-shift" not in flags,
    )
    critic = json.loads((run_dir / "critic.json").read_text())
    assert (
        0 <= critic["top1_in_batch"] <= 1 and np.isfinite([critic["final_infonce_loss"], critic["heldout_logit_margin"]]).all()
    ), critic
    episode_length = 500 if "CartPole-v1" in flags else 200  # the expert's demos are full-length episodes
    # ranked within held-out batches of 64 (the last one smaller): chance is 1 / 64 per state of a full batch
    assert critic["heldout_transitions"] == episode_length
    assert critic["top1_in_batch_chance"] == pytest.approx(math.ceil(episode_length / 64) / episode_length)
    if "CartPole-v1" in flags:  # every held-out transition replayed, each of the 2 actions
        assert 0 <= critic["top1_reachable"] <= 1 and critic["top1_reachable_chance"] == 0.5, critic
        assert critic["top1_reachable_transitions"] == episode_length, critic
    else:  # continuous actions: no reachable set to rank in
        assert critic["top1_reachable"] is None and critic["top1_reachable_transitions"] == 0, critic
    assert args["critic_score"] == flag(flags, "--critic-score", "cosine")
    if args["critic_score"] == "cosine":  # logits in [-1/tau, 1/tau]: no margin exceeds 2 / tau
        assert abs(critic["heldout_logit_margin"]) <= 2 / float(flag(flags, "--tau", 0.1)) + 1e-4, critic
    if "--track" in flags:
        # the run ends with status 0 only if every logged statistic (losses, KL, learned reward) was finite
        assert list((workdir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    assert (args["anneal_lr"], args["norm_adv"]) == ("--no-anneal-lr" not in flags, "--no-norm-adv" not in flags)
    if "--capture-video" in flags:
        assert list((workdir / "videos").rglob("*.mp4")), "no evaluation video recorded"


def test_expert_actions_are_never_read(workdir):
    """Demos whose actions are NaN give exactly the run the real demos give, with finite outputs."""
    expert_dir = workdir / "nan-actions"
    shutil.copytree(EXPERTS / "CartPole-v1", expert_dir)
    with np.load(expert_dir / "demos.npz") as npz:
        demos = {key: npz[key] for key in npz.files}
    np.savez_compressed(
        expert_dir / "demos.npz", **{**demos, "actions": np.full(demos["actions"].shape, np.nan, dtype=np.float32)}
    )
    results = []
    for name, path in (("real", EXPERTS / "CartPole-v1"), ("nan", expert_dir)):
        run_script(
            "pmi_il.py",
            "--expert-path",
            path,
            "--exp-name",
            name,
            "--reward",
            "softmax",
            "--negatives",
            "mixed",
            *COMMON,
            cwd=workdir,
        )
        (run_dir,) = [d for d in run_dirs(workdir) if f"__{name}__" in d.name]
        critic = json.loads((run_dir / "critic.json").read_text())
        results.append(
            [(row["global_step"], row["eval_return_mean"]) for row in read_eval_csv(run_dir)] + [critic["top1_in_batch"]]
        )
    assert results[0] == results[1] and np.isfinite(results[1][:-1]).all() and np.isfinite(results[1][-1]), results


def test_bad_input_is_one_clear_sentence(workdir):
    result = run_script(
        "pmi_il.py", "--env-id", "MountainCar-v0", "--expert-path", workdir / "nowhere", cwd=workdir, check=False
    )
    assert_clean_error(result, f"{workdir / 'nowhere'} is not a usable expert folder", "python cleanil/demos.py --check")
    result = run_script("pmi_il.py", "--env-id", "NoSuchEnv-v0", cwd=workdir, check=False)
    assert_clean_error(result, "unknown environment id 'NoSuchEnv-v0'")
    # the held-out episodes follow the training ones: 24 + 5 of the 25 shipped
    result = run_script(
        "pmi_il.py", "--num-expert-trajectories", 24, "--num-heldout-trajectories", 5, cwd=workdir, check=False
    )
    assert_clean_error(result, "--num-expert-trajectories 29 is not between 1 and its 25 episodes")
    result = run_script("pmi_il.py", "--num-expert-trajectories", 1, "--subsample-frequency", 20, cwd=workdir, check=False)
    assert_clean_error(result, "--num-negatives 64 must be below the critic batch size, 25")
    assert not (workdir / "runs").exists()


def test_main_rewards_each_agent_transition_with_the_frozen_critics_log_f(workdir, monkeypatch):
    """The reward main fed GAE in its last iteration (the script's globals after a short CartPole-v1 run, --reward pmi):
    r = log f(s, s') of the frozen critic at each valid agent transition, s before s', and 0 at the autoreset steps.
    Main computes it itself, so only a run shows its sign and wiring."""
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(
        sys, "argv", [str(SCRIPTS / "pmi_il.py"), "--env-id", "CartPole-v1", *map(str, COMMON), "--reward", "pmi"]
    )
    script = runpy.run_path(str(SCRIPTS / "pmi_il.py"), run_name="__main__")
    critic, mask, rewards = script["critic"], script["mask"], script["rewards"]
    with torch.no_grad():
        log_f = pmi_il.pmi_reward(
            critic.phi1(script["b_next_obs"][mask]), critic.phi2(script["b_obs"][mask]), script["args"].tau
        )
    torch.testing.assert_close(rewards[mask], log_f)
    assert (rewards[~mask] == 0).all() and (~mask).any() and log_f.abs().max() > 0.1


@pytest.mark.learning
def test_pmi_il_cartpole_reaches_expert_return_from_observations_only(workdir):
    # 100k agent steps after 2000 critic steps: about 20 s of one idle core; seeds 1-3 end at 483, 493, 500
    run_script("pmi_il.py", "--env-id", "CartPole-v1", "--total-timesteps", 100_000, "--eval-frequency", 50_000, cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    returns = [row["eval_return_mean"] for row in read_eval_csv(run_dir)]
    assert returns[-1] >= 450, returns
    critic = json.loads((run_dir / "critic.json").read_text())
    assert critic["top1_in_batch"] > 0.5, critic  # chance is 1/256
    assert critic["top1_reachable"] > 0.75, critic  # chance is 1/2: the critic tells the expert's action from the other


@pytest.mark.learning
def test_pmi_il_acrobot_imitates_with_the_per_step_cost(workdir):
    # the default temperature, the reward as a per-step cost (a task that ends on success): seeds 1-3 end at -79, -76,
    # -77 (expert -77.5, random -500); 100k steps, about 25 s of one idle core
    run_script(
        "pmi_il.py",
        "--env-id",
        "Acrobot-v1",
        "--no-reward-shift",
        "--total-timesteps",
        100_000,
        "--eval-frequency",
        50_000,
        cwd=workdir,
    )
    (run_dir,) = run_dirs(workdir)
    returns = [row["eval_return_mean"] for row in read_eval_csv(run_dir)]
    assert returns[-1] >= -120, returns
    critic = json.loads((run_dir / "critic.json").read_text())
    assert critic["top1_reachable"] > 0.5 and critic["top1_reachable_chance"] == pytest.approx(1 / 3), critic
    assert critic["heldout_logit_margin"] <= 2 / 0.2, critic  # the cosine's bound: no saturation to answer with a temperature
