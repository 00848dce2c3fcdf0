"""cleanil/demos.py and the demos-only expert folder (README, "Your own demonstrations").

Each source format is built here from real env steps (Minari's own writers, h5py, numpy), converted, checked against the
episodes it was built from (boundaries, terminal vs timeout, chained next observations, returns) and imitated by bc.py
for a few steps; each converter refuses bad input with one sentence. Then what the scripts make of a demos-only folder:
the demos' return and a measured random return stand in for missing ones, nothing is written back unless asked, float16
observations load as float32, and dagger.py alone asks for a policy."""

import json
import runpy
import shutil
import sys

import gymnasium as gym
import numpy as np
import pytest

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
    flags = [
        *map(str, make_flags(tmp_path)),
        *(
            ["--expert-path", str(tmp_path / "out")]
            if case != "complete-without-demos"
            else ["--expert-path", str(tmp_path / "empty")]
        ),
    ]
    existed = (tmp_path / "out").exists()
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "demos.py"), *flags])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPTS / "demos.py"), run_name="__main__")
    message = stop.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    assert fragment in message, message
    assert existed or not (tmp_path / "out").exists()
    assert not (tmp_path / "empty").exists()


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


# ---- a demos-only folder in the scripts ----


def demos_only_folder(folder, info=None):
    folder.mkdir(parents=True)
    shutil.copy(EXPERTS / "CartPole-v1" / "demos.npz", folder)
    (folder / "expert.json").write_text(json.dumps(info or {"observation_shape": [4], "action_shape": []}))
    return folder


def test_a_demos_only_folder_stands_in_for_missing_returns_and_writes_nothing_back(tmp_path):
    import bc

    folder = demos_only_folder(tmp_path / "mine")
    written = (folder / "expert.json").read_bytes()
    result = run_script(
        "bc.py",
        "--env-id",
        "CartPole-v1",
        "--expert-path",
        folder,
        "--total-timesteps",
        30,
        "--eval-frequency",
        30,
        "--eval-episodes",
        1,
        "--num-expert-trajectories",
        2,
        cwd=tmp_path,
    )
    random_return = bc.random_policy_returns("CartPole-v1").mean()  # its fixed seed: every run measures the same
    lines = result.stderr.replace("\r", "\n").splitlines()
    said = f"{folder / 'expert.json'} has no expert_return_mean: the demos' mean return, 500.00 over 25 episodes, stands in"
    assert f"{said} for it." in lines, lines[:5]
    (said,) = [line for line in lines if "has no random_return_mean" in line]
    assert f"{random_return:.2f} over 50 episodes" in said and f"--expert-path {folder} --complete`" in said, said
    assert any("CartPole-v1: random_return_mean: 100%|" in line for line in lines), "no progress bar while measuring it"
    assert (folder / "expert.json").read_bytes() == written  # a run never writes into the user's folder
    rows = read_eval_csv(run_dirs(tmp_path)[-1])
    for row in rows:
        expected = (row["eval_return_mean"] - random_return) / (500 - random_return)
        assert row["normalized_score"] == pytest.approx(expected, abs=1e-6)

    # asked to, demos.py stores what was missing, and the scripts stop measuring it
    convert("--env-id", "CartPole-v1", "--expert-path", folder, "--complete", cwd=tmp_path)
    stored, info = read_folder(folder)
    assert info["random_return_mean"] == pytest.approx(random_return) and info["expert_return_mean"] == 500.0
    assert info["observation_shape"] == [4] and info["num_actions"] == 2 and info["random_episodes"] == 50
    with np.load(EXPERTS / "CartPole-v1" / "demos.npz") as shipped:
        np.testing.assert_array_equal(stored["observations"], shipped["observations"])  # --complete leaves demos.npz be
    result = run_script(
        "bc.py",
        "--env-id",
        "CartPole-v1",
        "--expert-path",
        folder,
        "--total-timesteps",
        30,
        "--eval-frequency",
        30,
        "--eval-episodes",
        1,
        "--num-expert-trajectories",
        2,
        cwd=tmp_path,
    )
    assert "stands in" not in result.stderr and "random_return_mean:" not in result.stderr, result.stderr


def test_dagger_alone_needs_the_policy_and_says_how_to_get_one(tmp_path):
    folder = demos_only_folder(
        tmp_path / "mine", {"observation_shape": [4], "action_shape": [], "expert_return_mean": 500, "random_return_mean": 22}
    )
    result = run_script("dagger.py", "--env-id", "CartPole-v1", "--expert-path", folder, cwd=tmp_path, check=False)
    assert_clean_error(
        result,
        "describes no expert policy, which dagger.py alone",
        f"`python cleanil/demos.py --env-id CartPole-v1 --expert-path {folder} --from-policy <policy.pt> --overwrite`",
    )
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_load_expert_info_refuses_what_defines_no_score(tmp_path):
    import bc

    env = gym.make("CartPole-v1")
    no_demos = tmp_path / "no-demos"
    no_demos.mkdir()
    (no_demos / "expert.json").write_text(json.dumps({"observation_shape": [4], "action_shape": [], "random_return_mean": 20}))
    with pytest.raises(SystemExit) as stop:
        bc.load_expert_info(no_demos, env, required=True)
    assert "has no expert_return_mean and there is no" in stop.value.code and "cleanil/demos.py" in stop.value.code
    tied = demos_only_folder(
        tmp_path / "tied", {"observation_shape": [4], "action_shape": [], "expert_return_mean": 20, "random_return_mean": 20}
    )
    with pytest.raises(SystemExit) as stop:
        bc.load_expert_info(tied, env, required=True)
    assert "define no normalized score" in stop.value.code
    # a complete demos-only json is taken as it is, with the env's id where it names none
    whole = demos_only_folder(
        tmp_path / "whole", {"observation_shape": [4], "action_shape": [], "expert_return_mean": 480, "random_return_mean": 20}
    )
    info = bc.load_expert_info(whole, env, required=True)
    assert info["env_id"] == "CartPole-v1" and bc.normalized_score(250.0, info) == pytest.approx(0.5)


def test_load_demos_reads_float16_observations_as_float32(tmp_path):
    import bc

    with np.load(EXPERTS / "CartPole-v1" / "demos.npz") as npz:
        shipped = {key: npz[key] for key in npz.files}
    np.savez_compressed(
        tmp_path / "demos.npz",
        **{
            **shipped,
            "observations": shipped["observations"].astype(np.float16),
            "next_observations": shipped["next_observations"].astype(np.float16),
        },
    )
    env = gym.make("CartPole-v1")
    loaded = bc.load_demos(tmp_path, env, 2, 1, 0, ("observations", "next_observations", "actions"))
    assert loaded["observations"].dtype == loaded["next_observations"].dtype == np.float32
    assert loaded["actions"].dtype == np.int64  # only float16 arrays change
    np.testing.assert_array_equal(loaded["observations"], shipped["observations"][:1000].astype(np.float16).astype(np.float32))
    assert np.abs(loaded["observations"] - shipped["observations"][:1000]).max() > 0  # float16 did round, so the cast is real


def test_load_demos_names_an_array_a_script_needs_and_the_folder_lacks(tmp_path):
    import gaifo

    with np.load(EXPERTS / "CartPole-v1" / "demos.npz") as npz:
        arrays = {key: npz[key] for key in npz.files if key != "next_observations"}
    np.savez_compressed(tmp_path / "demos.npz", **arrays)
    with pytest.raises(SystemExit) as stop:
        gaifo.load_demos(tmp_path, gym.make("CartPole-v1"), 2, 1, 0, gaifo.DEMO_KEYS)
    assert stop.value.code.startswith(f"error: {tmp_path / 'demos.npz'} has no next_observations"), stop.value.code
    assert "cleanil/demos.py --env-id CartPole-v1" in stop.value.code


@pytest.mark.parametrize(
    "script", sorted(path.stem for path in SCRIPTS.glob("*.py") if "def demos_mean_return" in path.read_text())
)
def test_a_corrupt_demos_npz_read_for_its_mean_return_is_one_sentence_in_every_script(script, tmp_path):
    """expert.json without expert_return_mean sends every script to demos.npz for it; a corrupt zip there is named
    (sac.py, dqn.py and reinforce.py once raised NameError here: they caught zipfile's error without importing it)."""
    module = runpy.run_path(str(SCRIPTS / f"{script}.py"), run_name="not_main")
    folder = demos_only_folder(tmp_path / "mine", {"observation_shape": [4], "action_shape": [], "random_return_mean": 20})
    (folder / "demos.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 64)  # a zip's signature, then nothing a zip holds
    with pytest.raises(SystemExit) as stop:
        module["load_expert_info"](folder, gym.make("CartPole-v1"), required=True)
    assert stop.value.code.startswith(f"error: {folder / 'demos.npz'} is corrupt or malformed"), stop.value.code
