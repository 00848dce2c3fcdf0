"""cleanil/demos.py: building, completing and checking expert folders (README, "Your own demonstrations").

Each source format is built here from real env steps (Minari's own writers, h5py, numpy), converted, checked against the
episodes it was built from (boundaries, terminal vs timeout, chained next observations, returns) and imitated by bc.py
for a few steps; each converter refuses bad input with one sentence. A trainer's run folder (policy.json + policy.pt)
becomes an expert folder that carries its training record and warns of a weak or falling expert. `--complete` fills in
the two returns a folder lacks; `--check` turns each corruption of a folder into its own `error:` line that names what
to run, passes every shipped expert, and is what every folder demos.py writes passes first. Last, what the scripts'
shared `load_expert` makes of a folder: float16 observations as float32, a missing array as one line naming --check."""

import json
import runpy
import shutil
import sys
import zlib

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import EXPERTS, SCRIPTS, assert_clean_error, read_eval_csv, run_dirs, run_script, validate_expert_folder

h5py = pytest.importorskip("h5py")
# Minari asks for an author, a description and so on of every dataset it writes; these test datasets have none
pytestmark = pytest.mark.filterwarnings("ignore:.* is set to None:UserWarning")


def balance(obs):
    """A CartPole controller that holds the pole for the whole 500-step time limit."""
    return int(obs[2] + 0.5 * obs[3] + 0.01 * obs[0] + 0.1 * obs[1] > 0)


def cartpole_episodes(num_episodes, seed=0):
    """Whole CartPole-v1 episodes of real env steps: even ones of the controller, which end in a timeout at the 500-step
    limit, odd ones of a random policy, which fall (a terminal). Each: T + 1 observations, T actions, rewards, flags."""
    env, rng = gym.make("CartPole-v1"), np.random.default_rng(seed)
    episodes = []
    for number in range(num_episodes):
        obs, _ = env.reset(seed=seed + number)
        episode = {"observations": [obs], "actions": [], "rewards": [], "terminals": [], "timeouts": []}
        done = False
        while not done:
            action = balance(obs) if number % 2 == 0 else int(rng.integers(2))
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(
                ("observations", "actions", "rewards", "terminals", "timeouts"), (obs, action, reward, terminated, truncated)
            ):
                episode[key].append(value)
            done = terminated or truncated
        episodes.append({key: np.array(value) for key, value in episode.items()})
    kinds = [bool(episode["timeouts"][-1]) for episode in episodes]
    assert any(kinds) and not all(kinds), kinds  # both kinds of episode end, or the split is not tested
    return episodes


def pendulum_episodes(num_episodes, seed=0):
    """Whole Pendulum-v1 episodes (continuous actions; each ends in a timeout at 200 steps) of a random policy."""
    env = gym.make("Pendulum-v1")
    env.action_space.seed(seed)
    episodes = []
    for number in range(num_episodes):
        obs, _ = env.reset(seed=seed + number)
        episode = {"observations": [obs], "actions": [], "rewards": [], "terminals": [], "timeouts": []}
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(
                ("observations", "actions", "rewards", "terminals", "timeouts"), (obs, action, reward, terminated, truncated)
            ):
                episode[key].append(value)
            done = terminated or truncated
        episodes.append({key: np.array(value) for key, value in episode.items()})
    return episodes


def flatten(episodes):
    """D4RL's layout: one row per transition, the episodes one after the other."""
    return {
        "observations": np.concatenate([episode["observations"][:-1] for episode in episodes]),
        "next_observations": np.concatenate([episode["observations"][1:] for episode in episodes]),
        **{
            key: np.concatenate([episode[key] for episode in episodes])
            for key in ("actions", "rewards", "terminals", "timeouts")
        },
    }


def read_folder(folder):
    with np.load(folder / "demos.npz") as npz:
        stored = {key: npz[key] for key in npz.files}
    return stored, json.loads((folder / "expert.json").read_text())


def assert_folder_holds(folder, episodes, next_observations_recorded=True, kinds_recorded=True):
    """demos.npz holds exactly these episodes, in order: their transitions, chained next observations (s'_t = s_{t+1}
    inside an episode) and terminal/timeout kinds; expert.json their mean return unless told otherwise."""
    stored, info = read_folder(folder)
    starts = stored["episode_starts"]
    stops = np.append(starts[1:], len(stored["rewards"]))
    assert len(starts) == len(episodes) == info["demos"]["episodes"], (len(starts), len(episodes))
    for start, stop, episode in zip(starts, stops, episodes):
        # without recorded next observations the last transition has no successor, so it is left out
        kept = len(episode["rewards"]) - (0 if next_observations_recorded else 1)
        assert stop - start == kept
        np.testing.assert_allclose(stored["observations"][start:stop], episode["observations"][:kept], rtol=1e-6)
        np.testing.assert_allclose(stored["next_observations"][start:stop], episode["observations"][1 : kept + 1], rtol=1e-6)
        np.testing.assert_allclose(stored["actions"][start:stop], episode["actions"][:kept], rtol=1e-6)
        np.testing.assert_allclose(stored["rewards"][start:stop], episode["rewards"][:kept], rtol=1e-6)
        ends = stored["terminations"][start:stop] | stored["truncations"][start:stop]
        assert ends[-1] and not ends[:-1].any()  # one end per episode, at its last transition
        if next_observations_recorded and kinds_recorded:
            assert stored["terminations"][stop - 1] == episode["terminals"][-1]
            assert stored["truncations"][stop - 1] == episode["timeouts"][-1]
        elif not next_observations_recorded:
            assert stored["truncations"][stop - 1] and not stored["terminations"][stop - 1]  # the recording stops there
    returns = [episode["rewards"].sum() for episode in episodes]
    assert info["demos"]["return_mean"] == pytest.approx(np.mean(returns))
    return stored, info


def train_bc(folder, env_id, cwd, num_trajectories):
    """bc.py for a few gradient steps on the folder; its two evaluations, with a finite normalized score."""
    run_script(
        "bc.py",
        "--env-id",
        env_id,
        "--expert-path",
        folder,
        "--num-expert-trajectories",
        num_trajectories,
        "--total-timesteps",
        30,
        "--eval-frequency",
        30,
        "--eval-episodes",
        1,
        "--batch-size",
        32,
        cwd=cwd,
    )
    rows = read_eval_csv(run_dirs(cwd)[-1])
    assert [row["global_step"] for row in rows] == [0, 30]
    assert all(np.isfinite([row["eval_return_mean"], row["normalized_score"]]).all() for row in rows), rows
    return rows


def convert(*flags, cwd, env_vars=None):
    result = run_script("demos.py", *flags, cwd=cwd, env_vars=env_vars)
    assert "wrote " in result.stdout, result.stdout
    return result


# ---- each source format, converted and imitated ----


def minari_buffers(episodes):
    from minari.data_collector.episode_buffer import EpisodeBuffer

    return [
        EpisodeBuffer(
            id=number,
            observations=episode["observations"],
            actions=episode["actions"],
            rewards=list(episode["rewards"]),
            terminations=list(episode["terminals"]),
            truncations=list(episode["timeouts"]),
            infos={},
        )
        for number, episode in enumerate(episodes)
    ]


def test_minari_dataset_from_its_data_collector(tmp_path, monkeypatch):
    pytest.importorskip(
        "jax",
        reason='Minari\'s DataCollector needs jax (pip install "jax[cpu]==0.10.2"); the next test '
        "covers the converter without it",
    )
    minari = pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    collector, rng = minari.DataCollector(gym.make("CartPole-v1")), np.random.default_rng(0)
    episodes = []
    for number in range(4):
        obs, _ = collector.reset(seed=number)
        episode = {"observations": [obs], "actions": [], "rewards": [], "terminals": [], "timeouts": []}
        done = False
        while not done:
            action = balance(obs) if number % 2 == 0 else int(rng.integers(2))
            obs, reward, terminated, truncated, _ = collector.step(action)
            for key, value in zip(episode, (obs, action, reward, terminated, truncated)):
                episode[key].append(value)
            done = terminated or truncated
        episodes.append({key: np.array(value) for key, value in episode.items()})
    collector.create_dataset(dataset_id="cartpole/mixed-v0", algorithm_name="a controller and a random policy")
    # by id, under $MINARI_DATASETS_PATH, and with the env the dataset records (no --env-id)
    result = convert(
        "--from-minari",
        "cartpole/mixed-v0",
        "--expert-path",
        tmp_path / "out",
        cwd=tmp_path,
        env_vars={"MINARI_DATASETS_PATH": str(tmp_path / "datasets")},
    )
    stored, info = assert_folder_holds(tmp_path / "out", episodes)
    returns = [episode["rewards"].sum() for episode in episodes]
    assert info["env_id"] == "CartPole-v1" and info["expert_return_mean"] == pytest.approx(np.mean(returns))
    assert "2 ending in a terminal, 2 in a timeout" in result.stdout, result.stdout
    train_bc(tmp_path / "out", "CartPole-v1", tmp_path, 4)


def test_minari_dataset_by_folder_with_reference_scores_and_a_cut_episode(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    episodes = cartpole_episodes(5)
    cut = {key: value.copy() for key, value in episodes[-1].items()}
    cut["terminals"][:], cut["timeouts"][:] = False, False  # the recording stopped inside the episode
    minari.create_dataset_from_buffers(
        "cartpole/cut-v0",
        minari_buffers([*episodes[:4], cut]),
        env="CartPole-v1",
        eval_env="CartPole-v1",
        ref_min_score=21.5,
        ref_max_score=499.0,
    )
    result = convert(
        "--from-minari",
        tmp_path / "datasets" / "cartpole" / "cut-v0",
        "--env-id",
        "CartPole-v1",
        "--expert-path",
        tmp_path / "out",
        cwd=tmp_path,
    )
    stored, info = assert_folder_holds(tmp_path / "out", episodes[:4])
    # Minari's own reference scores are the normalization, and say so
    assert info["expert_return_mean"] == 499.0 and info["random_return_mean"] == 21.5
    assert "ref_max_score" in info["expert_return_source"] and "ref_min_score" in info["random_return_source"]
    assert f"left out {len(cut['rewards'])} transitions that end no episode" in result.stdout, result.stdout
    train_bc(tmp_path / "out", "CartPole-v1", tmp_path, 2)


@pytest.mark.parametrize("with_next_observations", [True, False], ids=["next-observations", "no-next-observations"])
def test_d4rl_hdf5_splits_terminals_from_timeouts(with_next_observations, tmp_path):
    episodes = cartpole_episodes(4)
    arrays = flatten(episodes)
    extra = 7  # a recording cut short: the first steps of a fifth episode, neither terminal nor timeout
    tail = flatten(cartpole_episodes(2, seed=10)[1:])
    path = tmp_path / "cartpole.hdf5"
    with h5py.File(path, "w") as file:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
            if key != "next_observations" or with_next_observations:
                values = np.concatenate([arrays[key], tail[key][:extra]])
                file.create_dataset(key, data=values.astype(np.float32) if key in ("terminals", "timeouts") else values)
        file.create_dataset("infos/qpos", data=np.zeros(3))  # D4RL files carry more groups, which are not read
    result = convert("--from-d4rl", path, "--env-id", "CartPole-v1", "--expert-path", tmp_path / "out", cwd=tmp_path)
    assert_folder_holds(tmp_path / "out", episodes, next_observations_recorded=with_next_observations)
    assert f"left out {extra} transitions that end no episode" in result.stdout, result.stdout
    assert ("records no next observations" in result.stdout) != with_next_observations, result.stdout
    returns = [episode["rewards"].sum() for episode in episodes]
    assert f"return {np.mean(returns):.2f} +/- {np.std(returns):.2f}" in result.stdout, result.stdout
    train_bc(tmp_path / "out", "CartPole-v1", tmp_path, 4)


def test_sb3_npz_episodes_and_their_kinds_from_lengths(tmp_path):
    episodes = cartpole_episodes(4)
    arrays = flatten(episodes)
    starts = np.zeros(len(arrays["rewards"]), dtype=bool)
    starts[np.cumsum([0, *[len(episode["rewards"]) for episode in episodes[:-1]]])] = True
    # stable-baselines' generate_expert_traj: discrete actions as a column, one start flag per transition
    np.savez(
        tmp_path / "expert_cartpole.npz",
        obs=arrays["observations"],
        actions=arrays["actions"][:, None],
        rewards=arrays["rewards"],
        episode_returns=np.array([episode["rewards"].sum() for episode in episodes]),
        episode_starts=starts,
    )
    result = convert(
        "--from-sb3",
        tmp_path / "expert_cartpole.npz",
        "--env-id",
        "CartPole-v1",
        "--expert-path",
        tmp_path / "out",
        cwd=tmp_path,
    )
    stored, info = assert_folder_holds(tmp_path / "out", episodes, next_observations_recorded=False)
    assert "max_episode_steps (500) counts as a timeout" in result.stdout, result.stdout
    assert stored["actions"].dtype == np.int64 and stored["actions"].ndim == 1
    train_bc(tmp_path / "out", "CartPole-v1", tmp_path, 4)


def test_sb3_npz_lengths_tell_a_timeout_from_a_terminal(tmp_path):
    """With next observations left out the kinds are not in demos.npz, so check the guess directly: a 500-step episode
    is the time limit's, a shorter one fell."""
    import demos

    lengths = [500, 23, 500, 9]
    starts = np.cumsum([0, *lengths[:-1]])
    ends = demos.ends_from_starts(starts, sum(lengths), 500)
    stops = starts + np.array(lengths) - 1
    assert ends["timeouts"][stops].tolist() == [True, False, True, False]
    assert ends["terminals"][stops].tolist() == [False, True, False, True]
    assert ends["ends"].sum() == 4 and ends["ends"][stops].all()
    # Pendulum never terminates: a short episode there is a recording cut short, so every episode is a timeout
    ends = demos.ends_from_starts(starts, sum(lengths), 500, terminates=False)
    assert ends["timeouts"][stops].all() and not ends["terminals"].any()


def test_plain_npz_with_named_keys_and_float16_observations(tmp_path):
    episodes = pendulum_episodes(3)
    arrays = flatten(episodes)
    np.savez(
        tmp_path / "mine.npz",
        s=arrays["observations"],
        a=arrays["actions"],
        r=arrays["rewards"],
        fell=arrays["terminals"],
        cut=arrays["timeouts"],
        s_next=arrays["next_observations"],
    )
    result = convert(
        "--from-npz",
        tmp_path / "mine.npz",
        "--npz-observations-key",
        "s",
        "--npz-actions-key",
        "a",
        "--npz-rewards-key",
        "r",
        "--npz-terminals-key",
        "fell",
        "--npz-timeouts-key",
        "cut",
        "--npz-next-observations-key",
        "s_next",
        "--env-id",
        "Pendulum-v1",
        "--float16-observations",
        "--expert-path",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert "3 episodes (0 ending in a terminal, 3 in a timeout), 600 transitions" in result.stdout, result.stdout
    stored, info = read_folder(tmp_path / "out")
    assert stored["observations"].dtype == stored["next_observations"].dtype == np.float16
    np.testing.assert_array_equal(stored["observations"], arrays["observations"].astype(np.float16))
    np.testing.assert_allclose(stored["actions"], arrays["actions"])
    assert info["demos"]["observation_dtype"] == "float16"
    train_bc(tmp_path / "out", "Pendulum-v1", tmp_path, 3)


def test_plain_npz_with_episode_starts_alone(tmp_path):
    episodes = cartpole_episodes(4)
    arrays = flatten(episodes)
    starts = np.cumsum([0, *[len(episode["rewards"]) for episode in episodes[:-1]]])
    np.savez(
        tmp_path / "mine.npz",
        observations=arrays["observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        next_observations=arrays["next_observations"],
        episode_starts=starts,
    )
    result = convert(
        "--from-npz", tmp_path / "mine.npz", "--env-id", "CartPole-v1", "--expert-path", tmp_path / "out", cwd=tmp_path
    )
    # the kinds come from the lengths, and they match what the env said
    assert_folder_holds(tmp_path / "out", episodes)
    assert "tells no terminal from a timeout" in result.stdout, result.stdout


def test_from_policy_records_a_folder_dagger_can_use(tmp_path):
    folder = tmp_path / "Pendulum-v1"
    convert(
        "--from-policy",
        EXPERTS / "Pendulum-v1" / "policy.pt",
        "--env-id",
        "Pendulum-v1",
        "--num-demo-episodes",
        2,
        "--expert-eval-episodes",
        3,
        "--expert-path",
        folder,
        cwd=tmp_path,
    )
    info, stored = validate_expert_folder(folder, min_eval_episodes=3, min_demo_episodes=2)
    shipped = json.loads((EXPERTS / "Pendulum-v1" / "expert.json").read_text())
    assert info["policy"] == shipped["policy"]
    assert (folder / "policy.pt").read_bytes() == (EXPERTS / "Pendulum-v1" / "policy.pt").read_bytes()
    assert info["algorithm"] == "sac" and info["command"][:-1] == shipped["command"]
    assert "cleanil/demos.py" in info["command"][-1]
    assert info["expert_episodes"] == 3 and "policy" in info["expert_return_source"] and info["random_episodes"] == 50
    # the recorded actions are the policy's deterministic ones
    from conftest import load_expert_mlp

    np.testing.assert_allclose(load_expert_mlp(folder)(stored["observations"]), stored["actions"], atol=1e-5)
    run_script(
        "dagger.py",
        "--env-id",
        "Pendulum-v1",
        "--expert-path",
        folder,
        "--rounds",
        1,
        "--steps-per-round",
        100,
        "--eval-frequency",
        100,
        "--eval-episodes",
        1,
        "--num-expert-trajectories",
        2,
        "--epochs-per-round",
        1,
        cwd=tmp_path,
    )
    rows = read_eval_csv(run_dirs(tmp_path)[-1])
    assert rows[-1]["global_step"] == 100 and np.isfinite(rows[-1]["normalized_score"])


def run_folder(folder, env_id, policy_file, spec, **training):
    """A trainer's run folder as sac.py and dqn.py leave it (SPEC: policy.json beside policy.pt)."""
    folder.mkdir()
    shutil.copy(policy_file, folder / "policy.pt")
    record = {
        "env_id": env_id,
        "algorithm": "sac",
        "snapshot": "best",
        "snapshot_step": 18000,
        "training_steps": 20000,
        "training_wall_time_s": 700.0,
        "refill_env_steps": 0,
        "seed": 7,
        "command": f"python cleanil/sac.py --env-id {env_id}",
        "policy": {**spec, "file": "policy.pt"},
        **training,
    }
    (folder / "policy.json").write_text(json.dumps(record))
    return folder


def test_from_policy_takes_a_trainers_run_folder_and_carries_its_record(tmp_path):
    shipped = json.loads((EXPERTS / "Pendulum-v1" / "expert.json").read_text())
    run = run_folder(tmp_path / "run", "Pendulum-v1", EXPERTS / "Pendulum-v1" / "policy.pt", shipped["policy"])
    record = json.loads((run / "policy.json").read_text())
    record["best_eval_return"] = 500.0  # a best evaluation the recorded expert falls far short of
    (run / "policy.json").write_text(json.dumps(record))
    folder = tmp_path / "Pendulum-v1"
    # no --env-id: policy.json names it
    result = convert(
        "--from-policy", run, "--num-demo-episodes", 2, "--expert-eval-episodes", 3, "--expert-path", folder, cwd=tmp_path
    )
    info, stored = validate_expert_folder(folder, min_eval_episodes=3, min_demo_episodes=2)
    for key in ("algorithm", "snapshot", "snapshot_step", "training_steps", "training_wall_time_s", "seed"):
        assert info[key] == record[key], key
    assert info["command"][0] == record["command"] and "cleanil/demos.py --from-policy" in info["command"][1]
    assert info["policy"] == shipped["policy"] and info["demos"]["seed"] == 1
    assert (folder / "policy.pt").read_bytes() == (run / "policy.pt").read_bytes()
    # the weak-expert warning the trainers printed, against policy.json's best evaluation
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "below 80% of the best evaluation's 500.0" in warning and "--total-timesteps" in warning, warning
    assert "expert_failed_episodes" not in info  # Pendulum is no robot that falls
    # the same seeds as the trainers' --save-expert (demos at seed + 40_000): the shipped demos again
    with np.load(EXPERTS / "Pendulum-v1" / "demos.npz") as npz:
        np.testing.assert_allclose(stored["observations"], npz["observations"][:400], atol=1e-4)
        np.testing.assert_allclose(stored["actions"], npz["actions"][:400], atol=1e-4)


def test_from_policy_counts_the_episodes_a_mujoco_expert_fails(tmp_path):
    """An untrained InvertedPendulum policy drops the pole in every episode: each evaluation episode fails, which expert.json
    records and a warning says; the folder is still written, and --check passes it with the same warning on its demos."""
    torch.manual_seed(0)
    spec = {"layers": [4, 8, 1], "activation": "relu", "output": "tanh", "action_scale": [3.0], "action_bias": [0.0]}
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    torch.save(mlp.state_dict(), tmp_path / "untrained.pt")
    run = run_folder(tmp_path / "run", "InvertedPendulum-v4", tmp_path / "untrained.pt", spec)
    folder = tmp_path / "out"
    result = convert(
        "--from-policy", run, "--num-demo-episodes", 2, "--expert-eval-episodes", 5, "--expert-path", folder, cwd=tmp_path
    )
    info = json.loads((folder / "expert.json").read_text())
    assert info["expert_failed_episodes"] == info["expert_terminated_episodes"] == 5, info
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("barely above a random policy's" in line for line in warnings), warnings
    assert any("5 of the 5 evaluation episodes of the expert fail (5 fall before the time limit" in line for line in warnings)
    checked = run_script("demos.py", "--check", folder, cwd=tmp_path)
    assert checked.stdout.startswith(f"ok: {folder}: InvertedPendulum-v4, 2 episodes (2 ending in a terminal)"), checked
    assert "warning: 2 of the 2 demo episodes fail (2 fall before the time limit" in checked.stderr, checked.stderr


# ---- bad input: one sentence, a non-zero exit, nothing written ----


def cartpole_npz(path, **changes):
    """Two CartPole episodes as an npz under --from-npz's default names (those of demos.npz), with changes (None: left out)."""
    arrays = {**flatten(cartpole_episodes(2)), **changes}
    ours = {"terminals": "terminations", "timeouts": "truncations"}
    np.savez(path, **{ours.get(key, key): value for key, value in arrays.items() if value is not None})
    return path


def cartpole_hdf5(path, **changes):
    arrays = {**flatten(cartpole_episodes(2)), **changes}
    with h5py.File(path, "w") as file:
        for key, value in arrays.items():
            if value is not None:
                file.create_dataset(key, data=value)
    return path


def sb3_npz(path, returns_offset=0.0, first_start=True):
    episodes = cartpole_episodes(2)
    arrays = flatten(episodes)
    starts = np.zeros(len(arrays["rewards"]), dtype=bool)
    starts[[0, len(episodes[0]["rewards"])]] = True
    starts[0] = first_start
    np.savez(
        path,
        obs=arrays["observations"],
        actions=arrays["actions"][:, None],
        rewards=arrays["rewards"],
        episode_returns=np.array([episode["rewards"].sum() for episode in episodes]) + returns_offset,
        episode_starts=starts,
    )
    return path


def minari_dataset(root):
    import minari

    minari.create_dataset_from_buffers(
        "cartpole/two-v0", minari_buffers(cartpole_episodes(2)), env="CartPole-v1", eval_env="CartPole-v1"
    )
    return root / "cartpole" / "two-v0"


def existing_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "expert.json").write_text("{}")
    return cartpole_npz(tmp_path / "mine.npz")


def not_a_policy(tmp_path):
    (tmp_path / "policy.pt").write_text("not a state_dict")
    spec = {"file": "policy.pt", "layers": [4, 8, 2], "activation": "relu", "output": "argmax"}
    (tmp_path / "expert.json").write_text(json.dumps({"policy": spec}))
    return tmp_path / "policy.pt"


def pendulum_npz(path, **changes):
    """Two Pendulum episodes (each a timeout at 200 steps) as an npz under --from-npz's default names, with changes."""
    arrays = {**flatten(pendulum_episodes(2)), **changes}
    ours = {"terminals": "terminations", "timeouts": "truncations"}
    np.savez(path, **{ours.get(key, key): value for key, value in arrays.items() if value is not None})
    return path


def malformed_expert_json(tmp_path):
    folder = tmp_path / "empty"  # the case's --expert-path, which must stay as it is
    folder.mkdir()
    shutil.copy(EXPERTS / "CartPole-v1" / "demos.npz", folder)
    (folder / "expert.json").write_text("{")
    return folder


def length_of(array):
    return len(flatten(cartpole_episodes(2))[array])


BAD_INPUT = {
    "no-source": (lambda tmp: ["--env-id", "CartPole-v1"], "name exactly one source"),
    "two-sources": (
        lambda tmp: [
            "--env-id",
            "CartPole-v1",
            "--from-npz",
            cartpole_npz(tmp / "a.npz"),
            "--from-sb3",
            sb3_npz(tmp / "b.npz"),
        ],
        "name exactly one source",
    ),
    "missing-file": (lambda tmp: ["--env-id", "CartPole-v1", "--from-d4rl", tmp / "nowhere.hdf5"], "no such file"),
    "no-env-id": (lambda tmp: ["--from-npz", cartpole_npz(tmp / "a.npz")], "--env-id is required"),
    "non-positive-episodes": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-npz", cartpole_npz(tmp / "a.npz"), "--num-demo-episodes", 0],
        "--num-demo-episodes must be positive",
    ),
    "too-many-episodes": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-npz", cartpole_npz(tmp / "a.npz"), "--num-demo-episodes", 3],
        "asks for more episodes than the 2 whole ones",
    ),
    "existing-folder": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-npz", existing_folder(tmp)],
        "already holds an expert; pass --overwrite",
    ),
    "complete-without-demos": (lambda tmp: ["--env-id", "CartPole-v1", "--complete"], "but there is none"),
    "complete-malformed-expert-json": (
        lambda tmp: ["--env-id", "CartPole-v1", "--complete", "--expert-path", malformed_expert_json(tmp)],
        "--complete leaves",
    ),
    "check-and-a-source": (
        lambda tmp: ["--check", EXPERTS / "CartPole-v1", "--from-npz", cartpole_npz(tmp / "a.npz")],
        "name exactly one source",
    ),
    "npz-timeouts-stored-as-terminals": (
        lambda tmp: [
            "--env-id",
            "Pendulum-v1",
            "--from-npz",
            pendulum_npz(tmp / "a.npz", terminals=flatten(pendulum_episodes(2))["timeouts"], timeouts=None),
        ],
        "ends as a terminal at step 200 (its time limit: a timeout stored as a terminal), but Pendulum-v1 never terminates",
    ),
    "policy-run-folder-without-policy-json": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-policy", (tmp / "run").mkdir() or tmp / "run"],
        "is no policy in cleanil's format",
    ),
    "minari-unknown-id": (lambda tmp: ["--from-minari", "cartpole/none-v0"], "no local Minari dataset 'cartpole/none-v0'"),
    "minari-other-env": (
        lambda tmp: ["--from-minari", minari_dataset(tmp / "datasets"), "--env-id", "Pendulum-v1"],
        "but Pendulum-v1 observes (3,)",
    ),
    "d4rl-missing-timeouts": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-d4rl", cartpole_hdf5(tmp / "a.hdf5", timeouts=None)],
        "has no timeouts",
    ),
    "d4rl-not-hdf5": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-d4rl", cartpole_npz(tmp / "a.npz")],
        "is not a readable HDF5 file",
    ),
    "d4rl-flags-not-0-1": (
        lambda tmp: [
            "--env-id",
            "CartPole-v1",
            "--from-d4rl",
            cartpole_hdf5(tmp / "a.hdf5", terminals=np.full(length_of("terminals"), 2.0)),
        ],
        "terminals must be one 0/1 flag per transition",
    ),
    "d4rl-other-env": (
        lambda tmp: ["--env-id", "Acrobot-v1", "--from-d4rl", cartpole_hdf5(tmp / "a.hdf5")],
        "but Acrobot-v1 observes (6,)",
    ),
    "d4rl-no-whole-episode": (
        lambda tmp: [
            "--env-id",
            "CartPole-v1",
            "--from-d4rl",
            cartpole_hdf5(
                tmp / "a.hdf5", terminals=np.zeros(length_of("terminals")), timeouts=np.zeros(length_of("timeouts"))
            ),
        ],
        "holds no whole episode",
    ),
    "d4rl-short-flags": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-d4rl", cartpole_hdf5(tmp / "a.hdf5", timeouts=np.zeros(5))],
        "holds 5 timeouts for",
    ),
    "sb3-returns-disagree": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-sb3", sb3_npz(tmp / "a.npz", returns_offset=3.0)],
        "are not what its episode_starts say",
    ),
    "sb3-first-start-unset": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-sb3", sb3_npz(tmp / "a.npz", first_start=False)],
        "episode_starts must be increasing indices from 0",
    ),
    "npz-no-episode-delimiters": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-npz", cartpole_npz(tmp / "a.npz", terminals=None, timeouts=None)],
        "cannot be told apart",
    ),
    "npz-named-key-absent": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-npz", cartpole_npz(tmp / "a.npz"), "--npz-terminals-key", "done"],
        "has no done",
    ),
    "npz-action-out-of-range": (
        lambda tmp: [
            "--env-id",
            "CartPole-v1",
            "--from-npz",
            cartpole_npz(tmp / "a.npz", actions=np.full(length_of("actions"), 2)),
        ],
        "are not indices 0..1",
    ),
    "npz-nan-observations": (
        lambda tmp: [
            "--env-id",
            "CartPole-v1",
            "--from-npz",
            cartpole_npz(tmp / "a.npz", observations=np.full((length_of("actions"), 4), np.nan, dtype=np.float32)),
        ],
        "non-finite observations",
    ),
    "npz-flags-and-starts-disagree": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-npz", cartpole_npz(tmp / "a.npz", episode_starts=np.array([0, 3]))],
        "disagree on where episodes start",
    ),
    "npz-action-beyond-bounds": (
        lambda tmp: [
            "--env-id",
            "Pendulum-v1",
            "--from-npz",
            cartpole_npz(
                tmp / "a.npz",
                observations=np.zeros((length_of("actions"), 3)),
                next_observations=np.zeros((length_of("actions"), 3)),
                actions=np.full((length_of("actions"), 1), 5.0),
            ),
        ],
        "beyond Pendulum-v1's bounds",
    ),
    "policy-of-another-env": (
        lambda tmp: ["--env-id", "Acrobot-v1", "--from-policy", EXPERTS / "CartPole-v1" / "policy.pt"],
        "is --env-id the env it was trained in",
    ),
    "policy-not-a-policy": (
        lambda tmp: ["--env-id", "CartPole-v1", "--from-policy", not_a_policy(tmp)],
        "is no policy in cleanil's format",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_sentence_and_writes_nothing(case, tmp_path, monkeypatch):
    """The whole script in this process (a subprocess per case would cost a second each): it must end in SystemExit with
    one sentence, which `python cleanil/demos.py` prints on stderr with exit status 1; any other exception fails here."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    make_flags, fragment = BAD_INPUT[case]
    flags = [*map(str, make_flags(tmp_path))]
    if "--expert-path" not in flags and "--check" not in flags:
        flags += ["--expert-path", str(tmp_path / ("empty" if case == "complete-without-demos" else "out"))]
    existed = (tmp_path / "out").exists()
    before = (tmp_path / "empty").exists(), {path: path.read_bytes() for path in tmp_path.glob("empty/*")}
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "demos.py"), *flags])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPTS / "demos.py"), run_name="__main__")
    message = stop.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    assert fragment in message, message
    assert existed or not (tmp_path / "out").exists()
    assert ((tmp_path / "empty").exists(), {path: path.read_bytes() for path in tmp_path.glob("empty/*")}) == before


def test_bad_input_from_the_command_line(tmp_path):
    """What a user sees: one line on stderr, exit status 1, no traceback, and the folder untouched."""
    result = run_script(
        "demos.py",
        "--env-id",
        "Acrobot-v1",
        "--from-d4rl",
        cartpole_hdf5(tmp_path / "a.hdf5"),
        "--expert-path",
        tmp_path / "out",
        cwd=tmp_path,
        check=False,
    )
    assert_clean_error(result, "but Acrobot-v1 observes (6,)")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "out").exists()


# ---- --complete: the two returns every script requires ----


def demos_only_folder(folder, info=None, source="CartPole-v1"):
    folder.mkdir(parents=True)
    shutil.copy(EXPERTS / source / "demos.npz", folder)
    (folder / "expert.json").write_text(json.dumps(info or {"observation_shape": [4], "action_shape": []}))
    return folder


def check(folder, *flags, monkeypatch, capsys):
    """`python cleanil/demos.py --check folder flags` in this process: (exit status, stdout, stderr lines)."""
    capsys.readouterr()  # what ran before
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "demos.py"), "--check", str(folder), *map(str, flags)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPTS / "demos.py"), run_name="__main__")
    out = capsys.readouterr()
    return stop.value.code, out.out, [line for line in out.err.splitlines() if "deprecat" not in line.lower()]


def test_check_names_complete_for_missing_returns_and_complete_fills_them(tmp_path, monkeypatch, capsys):
    import demos

    folder = demos_only_folder(tmp_path / "mine")
    code, out, errors = check(folder, "--env-id", "CartPole-v1", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1 and not out and len(errors) == 3, errors
    complete = f"`python cleanil/demos.py --env-id CartPole-v1 --expert-path {folder} --complete` fills it in."
    for line, key in zip(errors, ("env_id", "expert_return_mean", "random_return_mean")):
        assert line == f"error: {folder}: expert.json has no {key}; {complete}", line

    convert("--env-id", "CartPole-v1", "--expert-path", folder, "--complete", cwd=tmp_path)
    stored, info = read_folder(folder)
    random_return = demos.random_policy_returns("CartPole-v1").mean()  # 50 episodes from a fixed seed: the same each time
    assert info["random_return_mean"] == pytest.approx(random_return) and info["random_episodes"] == 50
    assert info["expert_return_mean"] == 500.0 and info["expert_return_source"] == "the demos' mean return"
    assert info["env_id"] == "CartPole-v1" and info["observation_shape"] == [4] and info["num_actions"] == 2
    with np.load(EXPERTS / "CartPole-v1" / "demos.npz") as shipped:
        np.testing.assert_array_equal(stored["observations"], shipped["observations"])  # --complete leaves demos.npz be
    code, out, errors = check(folder, monkeypatch=monkeypatch, capsys=capsys)  # the env now from expert.json
    assert code == 0 and not errors and out.startswith(f"ok: {folder}: CartPole-v1, 25 episodes"), (out, errors)
    train_bc(folder, "CartPole-v1", tmp_path, 2)


def test_complete_reads_the_env_from_expert_json_and_keeps_what_it_holds(tmp_path):
    info = {"env_id": "CartPole-v1", "observation_shape": [4], "action_shape": [], "expert_return_mean": 480.0}
    folder = demos_only_folder(tmp_path / "mine", info)
    convert("--expert-path", folder, "--complete", cwd=tmp_path)
    _, completed = read_folder(folder)
    assert completed["expert_return_mean"] == 480.0 and np.isfinite(completed["random_return_mean"])


def test_complete_refuses_a_value_it_would_not_overwrite(tmp_path):
    info = {"env_id": "CartPole-v1", "observation_shape": [4], "action_shape": [], "expert_return_mean": float("nan")}
    folder = demos_only_folder(tmp_path / "mine", info)
    written = (folder / "expert.json").read_bytes()
    result = run_script("demos.py", "--expert-path", folder, "--complete", cwd=tmp_path, check=False)
    assert_clean_error(
        result, f"--complete leaves {folder} as it is: expert.json's expert_return_mean nan is no finite number"
    )
    assert "delete it from expert.json" in result.stderr and (folder / "expert.json").read_bytes() == written


# ---- --check: each corruption of a folder is one error line that names what to run ----


def zero_inside(src, dst):
    """A copy of the npz at src with 4 KiB zeroed inside a deflate stream (the length unchanged, unlike a truncated
    file), at the first offset where numpy's read fails in zlib itself rather than on the zip's CRC check."""
    data = src.read_bytes()
    for offset in range(200, len(data) - 4096, 997):
        dst.write_bytes(data[:offset] + bytes(4096) + data[offset + 4096 :])
        try:
            with np.load(dst) as npz:
                for key in npz.files:
                    npz[key]
        except zlib.error:
            return
        except Exception:
            continue
    raise AssertionError(f"no offset of {src} gives a zlib.error")


def edit_json(**changes):
    """A corruption: expert.json with these fields changed (None: removed)."""

    def corrupt(folder):
        info = json.loads((folder / "expert.json").read_text())
        info.update(changes)
        (folder / "expert.json").write_text(json.dumps({key: value for key, value in info.items() if value is not None}))

    return corrupt


def edit_demos(change):
    """A corruption: demos.npz's arrays (a dict) changed in place by change(arrays), and written back."""

    def corrupt(folder):
        with np.load(folder / "demos.npz") as npz:
            arrays = {key: npz[key] for key in npz.files}
        change(arrays)
        np.savez_compressed(folder / "demos.npz", **arrays)

    return corrupt


def write(name, data):
    return lambda folder: (folder / name).write_bytes(data)


def put(arrays, key, index, value):
    arrays[key] = arrays[key].copy()
    arrays[key][index] = value


def merge_first_two_episodes(arrays):
    put(arrays, "truncations", arrays["episode_starts"][1] - 1, False)
    arrays["episode_starts"] = np.delete(arrays["episode_starts"], 1)


def npy_not_npz(folder):
    with open(folder / "demos.npz", "wb") as file:
        np.save(file, np.zeros(3))


def pendulum_policy_in(folder):
    shutil.copy(EXPERTS / "CartPole-v1" / "policy.pt", folder / "policy.pt")
    edit_json(policy=json.loads((EXPERTS / "CartPole-v1" / "expert.json").read_text())["policy"])(folder)


REBUILD = "--from-<minari|d4rl|sb3|npz|policy> <source> --overwrite`."
CHECK_CASES = {
    # expert.json
    "no-expert-json": (
        "CartPole-v1",
        lambda folder: (folder / "expert.json").unlink(),
        "there is no expert.json",
        "--complete` writes one",
    ),
    "expert-json-not-json": ("CartPole-v1", write("expert.json", b"{"), "expert.json is not readable JSON", REBUILD),
    "expert-json-a-list": ("CartPole-v1", write("expert.json", b"[1, 2]"), "expert.json holds no JSON object", REBUILD),
    "no-expert-return": (
        "CartPole-v1",
        edit_json(expert_return_mean=None),
        "has no expert_return_mean",
        "--complete` fills it in",
    ),
    "no-random-return": (
        "CartPole-v1",
        edit_json(random_return_mean=None),
        "has no random_return_mean",
        "--complete` fills it in",
    ),
    "no-observation-shape": ("CartPole-v1", edit_json(observation_shape=None), "has no observation_shape", "--complete`"),
    "nan-return": (
        "CartPole-v1",
        edit_json(expert_return_mean=float("nan")),
        "expert_return_mean nan is no finite number",
        "delete it from expert.json and `",
    ),
    "string-return": (
        "CartPole-v1",
        edit_json(random_return_mean="22"),
        "random_return_mean '22' is no finite number",
        "--complete` measures it again",
    ),
    "tied-returns": (
        "CartPole-v1",
        edit_json(expert_return_mean=20, random_return_mean=20),
        "are both 20, which leaves the normalized score",
        "--complete --expert-return-mean <the expert's return>`",
    ),
    "shape-of-another-env": (
        "CartPole-v1",
        edit_json(observation_shape=[6]),
        "expert.json gives observation_shape [6], but CartPole-v1 has [4]",
        "is CartPole-v1 the env it was recorded in?",
    ),
    "num-actions-of-another-env": (
        "CartPole-v1",
        edit_json(num_actions=3),
        "gives num_actions 3, but CartPole-v1 has 2",
        REBUILD,
    ),
    # demos.npz: the file
    "no-demos": ("CartPole-v1", lambda folder: (folder / "demos.npz").unlink(), "there is no demos.npz", REBUILD),
    "truncated-zip": (
        "CartPole-v1",
        lambda folder: write("demos.npz", (folder / "demos.npz").read_bytes()[:5000])(folder),
        "demos.npz is corrupt or no npz archive (BadZipFile",
        REBUILD,
    ),
    "corrupt-deflate-stream": (
        "CartPole-v1",
        lambda folder: zero_inside(EXPERTS / "CartPole-v1" / "demos.npz", folder / "demos.npz"),
        "demos.npz is corrupt or no npz archive (error: Error -3",
        REBUILD,
    ),
    "not-a-zip": ("CartPole-v1", write("demos.npz", b"hello"), "demos.npz is corrupt or no npz archive (ValueError", REBUILD),
    "npy-not-npz": ("CartPole-v1", npy_not_npz, "demos.npz is corrupt or no npz archive (TypeError", REBUILD),
    "pickled-objects": (
        "CartPole-v1",
        edit_demos(lambda a: a.update(rewards=a["rewards"].astype(object))),
        "(ValueError: Object arrays cannot be loaded",
        REBUILD,
    ),
    # demos.npz: its arrays
    "missing-array": (
        "CartPole-v1",
        edit_demos(lambda a: a.pop("next_observations")),
        "demos.npz has no next_observations (it holds",
        REBUILD,
    ),
    "observation-shape": (
        "CartPole-v1",
        edit_demos(lambda a: a.update(observations=a["observations"][:, :3])),
        "holds observations of shape (12500, 3), where CartPole-v1 and 12500 rewards need (12500, 4)",
        REBUILD,
    ),
    "short-actions": (
        "CartPole-v1",
        edit_demos(lambda a: a.update(actions=a["actions"][:-1])),
        "holds actions of shape (12499,), where CartPole-v1 and 12500 rewards need (12500,)",
        REBUILD,
    ),
    "nan-observation": (
        "CartPole-v1",
        edit_demos(lambda a: put(a, "observations", (7, 2), np.nan)),
        "non-finite observations (the first at transition 7)",
        REBUILD,
    ),
    "inf-reward": (
        "CartPole-v1",
        edit_demos(lambda a: put(a, "rewards", 9, np.inf)),
        "non-finite rewards (the first at transition 9)",
        REBUILD,
    ),
    "string-rewards": (
        "CartPole-v1",
        edit_demos(lambda a: a.update(rewards=a["rewards"].astype(str))),
        "holds rewards of dtype <U",
        REBUILD,
    ),
    "action-out-of-range": (
        "CartPole-v1",
        edit_demos(lambda a: put(a, "actions", 5, 2)),
        "actions outside CartPole-v1's Discrete(2) (the first at transition 5)",
        REBUILD,
    ),
    "float-actions": (
        "CartPole-v1",
        edit_demos(lambda a: a.update(actions=a["actions"].astype(np.float32))),
        "float32 actions, where CartPole-v1's are integer indices",
        REBUILD,
    ),
    "action-beyond-bounds": (
        "Pendulum-v1",
        edit_demos(lambda a: put(a, "actions", 3, 5.0)),
        "actions outside Pendulum-v1's Box(-2.0, 2.0, (1,), float32) (the first at transition 3)",
        REBUILD,
    ),
    "starts-not-from-0": (
        "CartPole-v1",
        edit_demos(lambda a: put(a, "episode_starts", 0, 1)),
        "episode_starts [1, 500, 1000, 1500, 2000]... are not increasing indices from 0",
        REBUILD,
    ),
    "starts-not-increasing": (
        "CartPole-v1",
        edit_demos(lambda a: put(a, "episode_starts", 2, 400)),
        "are not increasing indices from 0 below its 12500 transitions",
        REBUILD,
    ),
    "flags-not-0-1": (
        "CartPole-v1",
        edit_demos(lambda a: a.update(terminations=a["terminations"] * 2 + 2)),
        "terminations are not 0/1 flags",
        REBUILD,
    ),
    "episode-without-end": (
        "CartPole-v1",
        edit_demos(lambda a: put(a, "truncations", 999, False)),
        "episode 1 ends in neither a termination nor a truncation",
        REBUILD,
    ),
    "end-inside-an-episode": (
        "CartPole-v1",
        edit_demos(lambda a: put(a, "terminations", 1100, True)),
        "flags an episode end inside episode 2",
        REBUILD,
    ),
    "episode-beyond-the-time-limit": (
        "CartPole-v1",
        edit_demos(merge_first_two_episodes),
        "episode 0 lasts 1000 steps, beyond CartPole-v1's limit of 500",
        REBUILD,
    ),
    # issue 36, item 7: Pendulum's timeouts stored as terminals (Pendulum never terminates)
    "timeouts-stored-as-terminals": (
        "Pendulum-v1",
        edit_demos(lambda a: a.update(terminations=a["truncations"], truncations=0 * a["truncations"])),
        "episode 0 (and 24 more) ends as a terminal at step 200 (its time limit: a timeout stored as a terminal), but "
        "Pendulum-v1 never terminates",
        REBUILD,
    ),
    # policy.pt, where expert.json has "policy"
    "corrupt-policy": (
        "CartPole-v1",
        write("policy.pt", b"not a state_dict"),
        "the policy that expert.json describes does not load (UnpicklingError",
        '--from-policy <run folder> --overwrite`), or delete "policy"',
    ),
    "no-policy-file": (
        "CartPole-v1",
        lambda folder: (folder / "policy.pt").unlink(),
        "does not load (FileNotFoundError",
        "only dagger.py needs it",
    ),
    "policy-of-another-env": (
        "Pendulum-v1",
        pendulum_policy_in,
        "policy.pt maps 4 observation dims to 2 argmax outputs, but Pendulum-v1 observes (3,)",
        "--from-policy <run folder>",
    ),
}


@pytest.mark.parametrize("case", CHECK_CASES)
def test_check_says_what_is_wrong_and_what_to_run(case, tmp_path, monkeypatch, capsys):
    env_id, corrupt, problem, fix = CHECK_CASES[case]
    folder = tmp_path / "expert"
    shutil.copytree(EXPERTS / env_id, folder)
    corrupt(folder)
    code, out, errors = check(folder, "--env-id", env_id, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1 and not out, (code, out)
    (line,) = errors  # one problem, one line
    assert line.startswith(f"error: {folder}: ") and problem in line and fix in line, line
    assert "python cleanil/demos.py" in line and line.endswith("."), line


def test_check_prints_every_problem_on_its_own_line_from_the_command_line(tmp_path):
    folder = tmp_path / "expert"
    shutil.copytree(EXPERTS / "CartPole-v1", folder)
    edit_json(random_return_mean=None)(folder)
    edit_demos(lambda a: put(a, "observations", (3, 0), np.nan))(folder)
    write("policy.pt", b"")(folder)
    result = run_script("demos.py", "--check", folder, cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr and not result.stdout, result
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith(f"error: {folder}: ") for line in errors), errors
    for line, problem in zip(errors, ("no random_return_mean", "does not load", "non-finite observations")):
        assert problem in line, line


def test_check_of_no_folder_or_no_env(tmp_path, monkeypatch, capsys):
    code, _, errors = check(tmp_path / "nowhere", monkeypatch=monkeypatch, capsys=capsys)
    demos = f"python cleanil/demos.py --env-id <env> --expert-path {tmp_path / 'nowhere'}"
    assert code == f"error: {tmp_path / 'nowhere'} is no folder; rebuild the folder with `{demos} {REBUILD}", code
    folder = tmp_path / "expert"
    shutil.copytree(EXPERTS / "CartPole-v1", folder)
    edit_json(env_id=None)(folder)
    code, _, errors = check(folder, monkeypatch=monkeypatch, capsys=capsys)
    named = f"`python cleanil/demos.py --check {folder} --env-id <env>` names the env to check it in."
    assert code == 1 and errors == [f"error: {folder}: it names no env; {named}"], errors


def test_check_takes_a_folder_of_another_env_whose_shapes_fit(tmp_path, monkeypatch, capsys):
    """Hopper-v4 demos in Hopper-v5: the scripts take them with --any-env, and --check says so."""
    code, out, errors = check(EXPERTS / "Hopper-v4", "--env-id", "Hopper-v5", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and not errors and "Hopper-v5 (recorded on Hopper-v4: the scripts take it with --any-env)" in out, out


@pytest.mark.parametrize("env_id", sorted(path.name for path in EXPERTS.iterdir() if path.is_dir()))
def test_every_shipped_expert_passes_check(env_id, tmp_path):
    """Ant-v4's shipped demos fail the failure bar (some episodes fall): a warning, not an error; the folder works."""
    result = run_script("demos.py", "--check", EXPERTS / env_id, cwd=tmp_path)
    assert result.stdout.startswith(f"ok: {EXPERTS / env_id}: {env_id}, ") and result.stdout.count("\n") == 1, result.stdout
    assert "a policy for dagger.py" in result.stdout and "error" not in result.stderr, result.stderr


# ---- what the scripts' shared load_expert makes of a folder (the block is the same in every script) ----


def test_load_expert_reads_float16_observations_as_float32(tmp_path):
    import bc

    folder = shutil.copytree(EXPERTS / "CartPole-v1", tmp_path / "mine")
    with np.load(EXPERTS / "CartPole-v1" / "demos.npz") as npz:
        shipped = {key: npz[key] for key in npz.files}
    half = {key: shipped[key].astype(np.float16) for key in ("observations", "next_observations")}
    np.savez_compressed(folder / "demos.npz", **{**shipped, **half})
    _, loaded = bc.load_expert(folder, gym.make("CartPole-v1"), 2, 1, 0, ("observations", "next_observations", "actions"))
    assert loaded["observations"].dtype == loaded["next_observations"].dtype == np.float32
    assert loaded["actions"].dtype == np.int64  # only float16 arrays change
    np.testing.assert_array_equal(loaded["observations"], half["observations"][:1000].astype(np.float32))
    assert np.abs(loaded["observations"] - shipped["observations"][:1000]).max() > 0  # float16 did round, so the cast is real


def test_load_expert_names_check_for_an_array_the_folder_lacks(tmp_path, monkeypatch, capsys):
    import bc

    folder = shutil.copytree(EXPERTS / "CartPole-v1", tmp_path / "mine")
    edit_demos(lambda a: a.pop("next_observations"))(folder)
    with pytest.raises(SystemExit) as stop:
        bc.load_expert(folder, gym.make("CartPole-v1"), 2, 1, 0, ("observations", "next_observations"))
    assert stop.value.code.startswith(f"error: {folder} is not a usable expert folder: "), stop.value.code
    assert f"`python cleanil/demos.py --check {folder}` says what to fix." in stop.value.code
    code, _, errors = check(folder, monkeypatch=monkeypatch, capsys=capsys)  # which does
    assert code == 1 and len(errors) == 1 and "demos.npz has no next_observations" in errors[0], errors
