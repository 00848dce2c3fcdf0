"""Expert folders: build them from your demonstrations or a trained policy, complete them, and check them.

Converts a local Minari dataset (`--from-minari`, Farama's offline-RL format), a D4RL-style HDF5 file (`--from-d4rl`:
observations, actions, rewards, terminals, timeouts, as in Fu et al. 2020, arXiv 2004.07219), a stable-baselines expert
npz (`--from-sb3`: obs, actions, rewards, episode_returns, episode_starts, as its generate_expert_traj writes) or an npz
of per-transition arrays under names of your choosing (`--from-npz`); or records deterministic episodes of a policy
(`--from-policy`: a run folder of sac.py or dqn.py, whose policy.json describes its policy.pt, or an expert folder),
which the folder then holds too, so that dagger.py can query it. `--complete` fills in what an existing folder's
expert.json lacks, in place; `--check FOLDER` says whether a folder is one the scripts can use, and what to run where
it is not (README, "Your own demonstrations").

Every source becomes the same per-transition arrays, checked against the env's spaces (`check_transitions`), then whole
episodes (`split_episodes`). An episode ends in a terminal (the env's `terminated`: no future, a TD target stops there)
or a timeout (`truncated`: cut short, s' still has a value); the two stay apart because the scripts treat them
differently (bootstrapping, absorbing states). Transitions after the last episode end, and an episode with neither flag,
are a recording cut short: left out, since their return is no episode's return. Where a source records no next
observations, s'_t = s_{t+1} inside an episode and each episode's last transition, whose successor was never recorded,
is left out (`chain_transitions`; the episode then ends in a timeout). Where it records episode starts alone
(stable-baselines), an episode of the env's max_episode_steps counts as a timeout and a shorter one as a terminal.

expert.json gets the two returns of the normalized score (R - R_random) / (R_expert - R_random), which every script
requires: R_expert is --expert-return-mean where given, else a Minari dataset's ref_max_score, else the policy's
measured return (--from-policy), else the mean return of the demos' whole episodes; R_random is a Minari dataset's
ref_min_score, else a uniformly random policy's (`random_policy_returns`: 50 episodes from a fixed seed). Every folder
is checked as `--check` checks it (`folder_problems`) before anything is written: a folder that fails is not written.
"""

import dataclasses
import json
import os
import pickle
import shlex
import shutil
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro
from tqdm import tqdm

SOURCES = ("minari", "d4rl", "sb3", "npz", "policy")
# envs that never end an episode themselves, only their time limit does: a terminal there is a timeout stored wrongly
NEVER_TERMINATE = ("Pendulum", "HalfCheetah", "Swimmer", "Reacher", "Pusher")


@dataclass
class Args:
    env_id: Optional[str] = None
    """the environment of the demonstrations (default with --from-minari, --from-policy, --complete and --check: the env
    the dataset, the policy or the folder records)"""
    expert_path: Optional[str] = None
    """the folder to write (default: experts/<env-id>/ next to cleanil/, where the scripts look without --expert-path)"""
    overwrite: bool = False
    """replace the demos.npz and expert.json already in expert_path"""
    seed: int = 1
    """seed of the episodes recorded and evaluated with --from-policy"""

    # the source: exactly one of these
    from_minari: Optional[str] = None
    """a local Minari dataset: its id (e.g. mujoco/hopper/expert-v0, looked up under $MINARI_DATASETS_PATH or
    ~/.minari/datasets and never downloaded) or its folder"""
    from_d4rl: Optional[str] = None
    """a D4RL-style HDF5 file: observations, actions, rewards, terminals, timeouts (and next_observations, if it has them)"""
    from_sb3: Optional[str] = None
    """a stable-baselines expert npz: obs, actions, rewards, episode_returns, episode_starts (one flag per transition)"""
    from_npz: Optional[str] = None
    """an npz of per-transition arrays (first axis = transition), under the names the --npz-*-key flags give"""
    from_policy: Optional[str] = None
    """a policy in cleanil's format: a run folder of sac.py or dqn.py (policy.json + policy.pt), an expert folder whose
    expert.json has "policy", or one of their files; records deterministic episodes of it and copies it into the folder"""
    complete: bool = False
    """no new demos: fill in what expert_path's expert.json lacks for the demos.npz already there (writing it if absent)"""
    check: Optional[str] = None
    """no new demos: check the expert folder at this path (expert.json, demos.npz, policy.pt) against --env-id (default:
    the env its expert.json names) and print `ok: ...`, or one `error:` line per problem with what to run to fix it"""

    # --from-npz: the array names in the file (an optional array left at its default name may be absent)
    npz_observations_key: str = "observations"
    """observations s_t"""
    npz_actions_key: str = "actions"
    """actions a_t (class indices for a discrete env)"""
    npz_rewards_key: str = "rewards"
    """rewards r_t"""
    npz_terminals_key: str = "terminations"
    """optional: flags of the transitions whose episode ends in a terminal state"""
    npz_timeouts_key: str = "truncations"
    """optional: flags of the transitions whose episode is cut short (a time limit)"""
    npz_next_observations_key: str = "next_observations"
    """optional: next observations s'_t (without them, s'_t = s_{t+1} and each episode's last transition is left out)"""
    npz_episode_starts_key: str = "episode_starts"
    """optional: the index of each episode's first transition, or one flag per transition; what delimits episodes where
    the file has neither terminal nor timeout flags"""

    # what demos.npz and expert.json hold
    num_demo_episodes: Optional[int] = None
    """episodes in demos.npz: the first this many whole episodes of a dataset (default: all), or this many recorded
    with --from-policy (default: --policy-demo-episodes)"""
    policy_demo_episodes: int = 25
    """--from-policy without --num-demo-episodes: episodes to record"""
    expert_eval_episodes: int = 50
    """--from-policy: deterministic episodes that measure the policy's return (>= 50, as for a shipped expert)"""
    expert_return_mean: Optional[float] = None
    """the return that scores 1 (e.g. a dataset's published expert reference); default in the module docstring"""
    float16_observations: bool = False
    """store observations as float16 to keep a large env's folder small (the scripts read them back as float32)"""
    action_tolerance: float = 1e-4
    """how far beyond the env's bounds a continuous action may lie (a dataset's rounding) before it is refused"""
    sb3_return_tolerance: float = 1e-3
    """--from-sb3: relative tolerance between each episode's summed rewards and its recorded episode_returns"""


def load_minari(source):
    """Per-transition arrays of a local Minari dataset (each episode records its T + 1 observations, so s'_t is exact),
    the env id it records and its reference scores."""
    try:
        import minari
    except ImportError:
        sys.exit("error: --from-minari needs the minari package: `pip install -r requirements.txt` (or minari and h5py).")
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            dataset = minari.MinariDataset(path / "data" if (path / "data").is_dir() else path)
        else:
            dataset = minari.load_dataset(source, download=False)
        episodes = list(dataset.iterate_episodes())
        metadata = dataset.storage.metadata
    except FileNotFoundError:
        sys.exit(
            f"error: no local Minari dataset {source!r} (neither a folder nor an id under $MINARI_DATASETS_PATH or "
            f"~/.minari/datasets); demos.py never downloads: fetch it first with `minari download {source}`."
        )
    except (OSError, ValueError, KeyError, TypeError, AssertionError, ImportError) as error:
        sys.exit(f"error: the Minari dataset {source!r} cannot be read ({' '.join(str(error).split())[:200]}).")
    if not episodes:
        sys.exit(f"error: the Minari dataset {source!r} holds no episodes.")
    if not all(isinstance(getattr(episode, key), np.ndarray) for episode in episodes for key in ("observations", "actions")):
        sys.exit(
            f"error: the Minari dataset {source!r} has structured observations or actions ({dataset.observation_space}, "
            f"{dataset.action_space}); cleanil's scripts read flat Box observations and Box or Discrete actions."
        )
    ends = [np.arange(len(episode.rewards)) == len(episode.rewards) - 1 for episode in episodes]
    transitions = {
        "observations": np.concatenate([episode.observations[:-1] for episode in episodes]),
        "next_observations": np.concatenate([episode.observations[1:] for episode in episodes]),
        "actions": np.concatenate([episode.actions for episode in episodes]),
        "rewards": np.concatenate([episode.rewards for episode in episodes]),
        "terminals": np.concatenate([episode.terminations for episode in episodes]),
        "timeouts": np.concatenate([episode.truncations for episode in episodes]),
        "ends": np.concatenate(ends),
    }
    reference = {key: float(metadata[key]) for key in ("ref_max_score", "ref_min_score") if metadata.get(key) is not None}
    env_id = dataset.env_spec.id if dataset.env_spec is not None else None
    return transitions, env_id, reference


def load_d4rl(path):
    """Per-transition arrays of a D4RL-style HDF5 file: an episode ends at each terminal or timeout."""
    try:
        import h5py
    except ImportError:
        sys.exit("error: --from-d4rl needs the h5py package: `pip install -r requirements.txt` (or `pip install h5py`).")
    required, optional = ("observations", "actions", "rewards", "terminals", "timeouts"), ("next_observations",)
    try:
        with h5py.File(path, "r") as file:
            missing = [key for key in required if key not in file]
            if missing:
                sys.exit(
                    f"error: {path} has no {', '.join(missing)} (it holds {', '.join(file.keys()) or 'nothing'}); a "
                    f"D4RL-style file holds {', '.join(required)} at its top level."
                )
            arrays = {key: file[key][()] for key in (*required, *optional) if key in file}
    except (OSError, TypeError) as error:  # TypeError: a group where a dataset belongs
        sys.exit(f"error: {path} is not a readable HDF5 file of arrays ({' '.join(str(error).split())[:200]}).")
    arrays = per_transition(arrays, path, set(arrays))
    for key in ("terminals", "timeouts"):
        arrays[key] = flags(arrays[key], key, path)
    return {**arrays, "ends": arrays["terminals"] | arrays["timeouts"]}, []


def load_sb3(path, env, return_tolerance):
    """Per-transition arrays of a stable-baselines expert npz, whose episode_starts flag each episode's first transition
    and whose episode_returns check the split; it tells no terminal from a timeout (see `ends_from_starts`)."""
    keys = ("obs", "actions", "rewards", "episode_returns", "episode_starts")
    arrays = load_arrays(
        path,
        {key: key for key in keys},
        set(keys),
        "a stable-baselines expert npz holds obs, actions, rewards, episode_returns and episode_starts",
        "episode_returns",
    )
    length = len(arrays["rewards"])
    starts = starts_from(arrays["episode_starts"], length, path, "episode_starts")
    transitions = {
        "observations": arrays["obs"],
        "actions": arrays["actions"],
        "rewards": arrays["rewards"],
        **ends_from_starts(starts, length, env.spec.max_episode_steps, env.spec.name not in NEVER_TERMINATE),
    }
    recorded = np.asarray(arrays["episode_returns"], dtype=np.float64).reshape(-1)
    summed = np.add.reduceat(np.asarray(arrays["rewards"], dtype=np.float64).reshape(length, -1).sum(1), starts)
    if len(recorded) != len(summed) or not np.allclose(summed, recorded, rtol=return_tolerance, atol=return_tolerance):
        sys.exit(
            f"error: {path}'s episode_starts split it into {len(summed)} episodes returning "
            f"{np.round(summed[:3], 2)}..., but its episode_returns records {len(recorded)} returning "
            f"{np.round(recorded[:3], 2)}...; the file's episodes are not what its episode_starts say."
        )
    return transitions, [kinds_note(env)]


def load_npz(path, names, named_by_user, required, env):
    """Per-transition arrays of an npz under the given names: episodes end at its terminal and timeout flags, or else
    follow its episode starts (see `ends_from_starts`); an optional array left at its default name may be absent."""
    arrays = load_arrays(
        path,
        names,
        named_by_user | set(required),
        "name its arrays with --npz-observations-key, --npz-actions-key, --npz-rewards-key and so on",
        "episode_starts",
    )
    length = len(arrays["rewards"])
    starts = (
        starts_from(arrays["episode_starts"], length, path, names["episode_starts"]) if "episode_starts" in arrays else None
    )
    if "terminals" in arrays or "timeouts" in arrays:
        for key in ("terminals", "timeouts"):
            arrays[key] = flags(arrays[key], names[key], path) if key in arrays else np.zeros(length, dtype=bool)
        arrays["ends"] = arrays["terminals"] | arrays["timeouts"]
        stops = np.flatnonzero(arrays["ends"]) + 1
        if starts is not None and not np.array_equal(starts, np.concatenate([[0], stops[stops < length]])):
            sys.exit(
                f"error: {path}'s {names['episode_starts']} and its terminal/timeout flags disagree on where episodes "
                f"start; fix the file, or leave one out with --npz-episode-starts-key or --npz-terminals-key."
            )
        return {key: value for key, value in arrays.items() if key != "episode_starts"}, []
    if starts is None:
        sys.exit(
            f"error: {path} has no terminal or timeout flags ({names['terminals']}, {names['timeouts']}) nor episode "
            f"starts ({names['episode_starts']}), so its episodes cannot be told apart; name the arrays that hold them "
            f"with --npz-terminals-key and --npz-timeouts-key, or --npz-episode-starts-key."
        )
    transitions = {key: value for key, value in arrays.items() if key != "episode_starts"}
    ends = ends_from_starts(starts, length, env.spec.max_episode_steps, env.spec.name not in NEVER_TERMINATE)
    return {**transitions, **ends}, [kinds_note(env)]


def load_arrays(path, names, required, layout, not_per_transition):
    """{our name: array} of the npz at path, read by its names; a missing required array is one sentence naming it, and
    so is an array (but not_per_transition) whose length is not the number of rewards."""
    try:
        with np.load(path) as data:
            missing = [name for key, name in names.items() if key in required and name not in data.files]
            if missing:
                sys.exit(
                    f"error: {path} has no {', '.join(missing)} (it holds {', '.join(data.files) or 'nothing'}); {layout}."
                )
            arrays = {key: data[name] for key, name in names.items() if name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        sys.exit(f"error: {path} is not a readable npz file ({' '.join(str(error).split())[:200]}).")
    return per_transition(arrays, path, set(arrays) - {not_per_transition})


def per_transition(arrays, path, keys):
    """The arrays, those of `keys` with one entry per transition (as many as rewards), the others at least an axis."""
    for key, values in arrays.items():
        if np.ndim(values) == 0:
            sys.exit(f"error: {path} holds a single value as {key}, where an array is needed.")
        if key in keys and len(values) != len(arrays["rewards"]):
            sys.exit(
                f"error: {path} holds {len(values)} {key} for {len(arrays['rewards'])} rewards; one per transition is needed."
            )
    return arrays


def flags(values, name, path):
    """A per-transition 0/1 array as booleans; anything else is refused."""
    values = np.asarray(values).reshape(len(values), -1)
    if values.shape[1] != 1 or not np.isin(values, (0, 1)).all():
        sys.exit(
            f"error: {path}'s {name} must be one 0/1 flag per transition; it holds entries of shape {values.shape[1:]} "
            f"with values such as {np.unique(values)[:5]}."
        )
    return values[:, 0].astype(bool)


def starts_from(values, length, path, name):
    """Episode start indices from indices, or from one flag per transition (stable-baselines' episode_starts)."""
    values = np.asarray(values)
    if values.dtype == bool or (len(values) == length and np.isin(values, (0, 1)).all() and length > 2):
        values = np.flatnonzero(flags(values, name, path))
    if (
        values.ndim != 1
        or not np.issubdtype(values.dtype, np.integer)
        or len(values) == 0
        or values[0] != 0
        or (np.diff(values) <= 0).any()
        or values[-1] >= length
    ):
        sys.exit(
            f"error: {path}'s {name} must be increasing indices from 0 below its {length} transitions (or one flag "
            f"per transition, the first set); it holds {values[:5]}."
        )
    return values


def ends_from_starts(starts, length, max_episode_steps, terminates=True):
    """Episode ends and kinds of episodes known by their starts alone: the last runs to the end of the file; one that
    lasts the env's max_episode_steps is a timeout (its TimeLimit cut it), a shorter one a terminal, unless the env
    never terminates (NEVER_TERMINATE): then every episode is a timeout."""
    stops = np.append(starts[1:], length)
    timeout = stops - starts == max_episode_steps if max_episode_steps else np.zeros(len(starts), dtype=bool)
    timeout |= not terminates
    ends, terminals, timeouts = (np.zeros(length, dtype=bool) for _ in range(3))
    ends[stops - 1], terminals[stops - 1], timeouts[stops - 1] = True, ~timeout, timeout
    return {"ends": ends, "terminals": terminals, "timeouts": timeouts}


def kinds_note(env):
    """What `ends_from_starts` assumed, for the user to check."""
    if env.spec.name in NEVER_TERMINATE:
        return f"the source tells no terminal from a timeout, and {env.spec.id} never terminates: every episode is a timeout"
    if env.spec.max_episode_steps is None:
        return (
            f"the source tells no terminal from a timeout, and {env.spec.id} has no time limit: every episode counts "
            f"as a terminal"
        )
    return (
        f"the source tells no terminal from a timeout: an episode of {env.spec.id}'s max_episode_steps "
        f"({env.spec.max_episode_steps}) counts as a timeout, a shorter one as a terminal"
    )


def check_transitions(transitions, env, action_tolerance, source):
    """The transitions with the env's shapes and dtypes (float32 observations, int64 or float32 actions, float64
    rewards), or one sentence on the first thing that does not fit the env."""
    length, env_id = len(transitions["rewards"]), env.spec.id
    obs_shape = env.observation_space.shape
    rewards = np.asarray(transitions["rewards"])
    if rewards.shape not in ((length,), (length, 1)) or not np.issubdtype(rewards.dtype, np.number):
        sys.exit(f"error: {source} holds rewards of shape {rewards.shape}; one number per transition is needed.")
    if length == 0:
        sys.exit(f"error: {source} holds no transitions.")
    checked = {"rewards": rewards.reshape(length).astype(np.float64)}
    for key in ("observations", "next_observations"):
        if key not in transitions:
            continue
        values = np.asarray(transitions[key])
        if values.shape != (length, *obs_shape) or not np.issubdtype(values.dtype, np.number):
            sys.exit(
                f"error: {source} holds {key} of shape {values.shape[1:]} (and {len(values)} of them for {length} "
                f"rewards), but {env_id} observes {obs_shape}; is --env-id the env it was recorded in?"
            )
        checked[key] = values.astype(np.float32)
    actions = np.asarray(transitions["actions"])
    if isinstance(env.action_space, gym.spaces.Discrete):
        num_actions = int(env.action_space.n)
        if actions.shape not in ((length,), (length, 1)) or not np.issubdtype(actions.dtype, np.number):
            sys.exit(
                f"error: {source} holds actions of shape {actions.shape[1:]}, but {env_id}'s discrete actions are "
                f"one index per transition; is --env-id the env it was recorded in?"
            )
        actions = actions.reshape(length)
        if not (
            np.isfinite(actions).all()
            and (actions == np.round(actions)).all()
            and (actions >= 0).all()
            and (actions < num_actions).all()
        ):
            sys.exit(
                f"error: {source} holds actions that are not indices 0..{num_actions - 1} of {env_id}'s actions "
                f"(e.g. {actions[(actions < 0) | (actions >= num_actions) | (actions != np.round(actions))][:3]})."
            )
        checked["actions"] = actions.astype(np.int64)
    else:
        low, high = env.action_space.low, env.action_space.high
        if actions.shape != (length, *env.action_space.shape) or not np.issubdtype(actions.dtype, np.number):
            sys.exit(
                f"error: {source} holds actions of shape {actions.shape[1:]} (and {len(actions)} of them for {length} "
                f"rewards), but {env_id} acts with {env.action_space.shape}; is --env-id the env it was recorded in?"
            )
        excess = np.maximum(actions - high, low - actions).max() if np.isfinite(actions).all() else np.inf
        if excess > action_tolerance:
            sys.exit(
                f"error: {source} holds actions up to {excess:.3g} beyond {env_id}'s bounds [{low.min():g}, "
                f"{high.max():g}] (or non-finite ones): not actions of this env, or unscaled; --action-tolerance allows "
                f"rounding."
            )
        checked["actions"] = np.clip(actions, low, high).astype(np.float32)
    for key, values in checked.items():
        finite = np.isfinite(values.reshape(length, -1)).all(1)
        if not finite.all():
            sys.exit(f"error: {source} holds non-finite {key} (the first at transition {np.flatnonzero(~finite)[0]}).")
    return {**transitions, **checked}


def split_episodes(ends, terminals, timeouts):
    """[start, stop) of every whole episode (one that ends in a terminal or a timeout), and the number of transitions
    that belong to none: a trailing run after the last end, or an episode that stopped with neither flag."""
    stops = np.flatnonzero(ends) + 1
    starts = np.concatenate([[0], stops[:-1]])
    episodes = [(int(start), int(stop)) for start, stop in zip(starts, stops) if terminals[stop - 1] or timeouts[stop - 1]]
    return episodes, len(ends) - sum(stop - start for start, stop in episodes)


def chain_transitions(transitions, episodes):
    """Indices of the transitions to keep and of their next observations, with the episodes' terminal and timeout flags.
    Without recorded next observations s'_t = s_{t+1}, so each episode's last transition, whose successor was never
    recorded, is left out and its shortened episode ends in a timeout (the recording stops; the env did not)."""
    if "next_observations" in transitions:
        index = np.concatenate([np.arange(start, stop) for start, stop in episodes])
        return index, index, transitions["terminals"][index], transitions["timeouts"][index]
    index = np.concatenate([np.arange(start, stop - 1) for start, stop in episodes])
    timeouts = np.zeros(len(index), dtype=bool)
    timeouts[np.cumsum([stop - 1 - start for start, stop in episodes if stop - start > 1], dtype=np.int64) - 1] = True
    return index, index + 1, np.zeros(len(index), dtype=bool), timeouts


def assemble_demos(transitions, episodes, float16_observations):
    """The demos.npz arrays of DESIGN.md from whole episodes; observations float16 on request, refused where float16
    would overflow."""
    index, next_index, terminations, truncations = chain_transitions(transitions, episodes)
    next_source = transitions.get("next_observations", transitions["observations"])
    demos = {
        "observations": transitions["observations"][index],
        "actions": transitions["actions"][index],
        "rewards": transitions["rewards"][index],
        "next_observations": next_source[next_index],
        "terminations": terminations,
        "truncations": truncations,
    }
    starts = np.flatnonzero(np.concatenate([[True], (terminations | truncations)[:-1]]))
    demos["episode_starts"] = starts.astype(np.int64)
    if float16_observations:
        largest = max(np.abs(demos["observations"]).max(), np.abs(demos["next_observations"]).max())
        if largest > np.finfo(np.float16).max:
            sys.exit(
                f"error: observations reach {largest:.4g}, beyond float16's {np.finfo(np.float16).max:g}; drop "
                f"--float16-observations."
            )
        for key in ("observations", "next_observations"):
            demos[key] = demos[key].astype(np.float16)
    return demos


class ExpertPolicy(nn.Module):
    """The shipped expert pi*, rebuilt from expert.json["policy"]: argmax(mlp(s)), or tanh(mlp(s)) * scale + bias."""

    def __init__(self, spec):
        super().__init__()
        layers, sizes = [], spec["layers"]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), {"relu": nn.ReLU, "tanh": nn.Tanh}[spec["activation"]]()]
        self.mlp = nn.Sequential(*layers[:-1])
        self.output = spec["output"]
        if self.output == "tanh":
            self.register_buffer("action_scale", torch.tensor(spec["action_scale"], dtype=torch.float32))
            self.register_buffer("action_bias", torch.tensor(spec["action_bias"], dtype=torch.float32))
        elif self.output != "argmax":
            raise ValueError(f"unknown policy output {self.output!r}")

    def forward(self, obs):
        if self.output == "argmax":
            return self.mlp(obs).argmax(-1)
        return torch.tanh(self.mlp(obs)) * self.action_scale + self.action_bias


# ---- policies: the trainers' policy.pt, rebuilt from its spec; its episodes as demos and as the expert's return ----

POLICY_ERRORS = (OSError, ValueError, LookupError, TypeError, RuntimeError, AttributeError, EOFError, pickle.UnpicklingError)
# what expert.json carries over from a trainer's policy.json (or from the expert folder a policy comes from)
TRAINING_KEYS = ("algorithm", "snapshot", "snapshot_step", "training_steps", "training_wall_time_s", "refill_env_steps")


def find_policy(source):
    """(the json that describes a policy, the policy's file): a run folder's policy.json (sac.py, dqn.py), an expert
    folder's expert.json with "policy", either json, or a policy file beside one."""
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    candidates = [path] if path.suffix == ".json" else [folder / "policy.json", folder / "expert.json"]
    try:
        info = json.loads(next((file for file in candidates if file.exists()), candidates[-1]).read_text())
        return info, path if path.suffix == ".pt" else folder / info["policy"]["file"]
    except POLICY_ERRORS as error:
        sys.exit(no_policy(source, error))


def no_policy(source, error):
    return (
        f"error: {source} is no policy in cleanil's format ({type(error).__name__}); --from-policy takes a run folder of "
        f'sac.py or dqn.py (policy.json + policy.pt), or an expert folder whose expert.json has "policy".'
    )


def build_policy(spec, file, env):
    """The ExpertPolicy that spec describes with file's weights, and why it cannot act in env (None where it can)."""
    policy = ExpertPolicy(spec)
    policy.mlp.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    inputs, outputs = policy.mlp[0].in_features, policy.mlp[-1].out_features
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    env_outputs = int(env.action_space.n) if discrete else int(np.prod(env.action_space.shape))
    if (
        inputs == int(np.prod(env.observation_space.shape))
        and outputs == env_outputs
        and (policy.output == "argmax") == discrete
    ):
        return policy.eval(), None
    return policy.eval(), (
        f"{file} maps {inputs} observation dims to {outputs} {policy.output} outputs, but {env.spec.id} observes "
        f"{env.observation_space.shape} and acts with {env.action_space}"
    )


def load_policy(source, info, file, env):
    """The policy that find_policy found, refused with one sentence if it does not load or does not act in env."""
    try:
        policy, misfit = build_policy(info["policy"], file, env)
    except POLICY_ERRORS as error:
        sys.exit(no_policy(source, error))
    if misfit:
        sys.exit(f"error: {misfit}; is --env-id the env it was trained in?")
    return policy


def evaluate_policy(act, env, num_episodes, seed):
    """Returns of num_episodes episodes of act (obs batch -> action batch), the env reseeded at seed (as the scripts'
    `evaluate`), and whether each ended by terminating (a robot falling) rather than at the time limit."""
    returns, terminated_episodes = [], []
    for episode in range(num_episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(act(obs[None])[0])
            done = terminated or truncated
        returns.append(info["episode"]["r"])
        terminated_episodes.append(terminated)
    return np.array(returns, dtype=np.float64), np.array(terminated_episodes, dtype=bool)


def rollout_episodes(act, env, num_episodes, seed):
    """Whole episodes of act as the demos.npz arrays of DESIGN.md (first axis = transition)."""
    keys = ("observations", "actions", "rewards", "next_observations", "terminations", "truncations")
    data, episode_starts, returns = {key: [] for key in keys}, [], []
    obs, _ = env.reset(seed=seed)
    episode_starts.append(0)
    while len(returns) < num_episodes:
        action = act(obs[None])[0]
        next_obs, reward, terminated, truncated, info = env.step(action)
        for key, value in zip(keys, (obs, action, reward, next_obs, terminated, truncated)):
            data[key].append(value)
        obs = next_obs
        if terminated or truncated:
            returns.append(info["episode"]["r"])
            obs, _ = env.reset()
            if len(returns) < num_episodes:
                episode_starts.append(len(data["observations"]))
    demos = {key: np.array(value) for key, value in data.items()}
    demos["observations"], demos["next_observations"] = (
        demos["observations"].astype(np.float32),
        demos["next_observations"].astype(np.float32),
    )
    demos["episode_starts"] = np.array(episode_starts, dtype=np.int64)
    return demos, np.array(returns)


def record_policy(policy, env, num_episodes, eval_episodes, seed):
    """num_episodes deterministic episodes of the policy as per-transition arrays, and the returns of eval_episodes more
    with whether each terminated (the seed offsets of the trainers: + 40_000 for the demos, + 20_000 for the evaluation)."""

    @torch.no_grad()
    def act(obs):
        return policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    recorded, _ = rollout_episodes(act, env, num_episodes, seed + 40_000)
    returns, terminated = evaluate_policy(act, env, eval_episodes, seed + 20_000)
    return (
        {
            **recorded,
            "terminals": recorded["terminations"],
            "timeouts": recorded["truncations"],
            "ends": recorded["terminations"] | recorded["truncations"],
        },
        returns,
        terminated,
    )


def expert_weakness(expert_return, random_return, best_eval_return, reward_threshold, fraction=0.8):
    """Why a policy about to become an expert looks weak (None if it does not): it is barely above random, it returns
    less than `fraction` of the best evaluation's gain over random (where its training recorded one), or a quarter of
    the gain the env's registered reward threshold ("solved") asks for."""
    gain = expert_return - random_return
    if gain < 0.05 * abs(random_return) + 1:
        return f"returns {expert_return:.1f}, barely above a random policy's {random_return:.1f}"
    if best_eval_return is not None and gain < fraction * (best_eval_return - random_return):
        return (
            f"returns {expert_return:.1f}, below {fraction:.0%} of the best evaluation's {best_eval_return:.1f} (random "
            f"{random_return:.1f})"
        )
    if reward_threshold is not None and gain < 0.25 * (reward_threshold - random_return):
        return (
            f"returns {expert_return:.1f}, far below the env's registered reward threshold {reward_threshold:g} (random "
            f"{random_return:.1f})"
        )
    return None


def is_mujoco(env):
    """A MuJoCo robot, whose episodes end early only by falling (in classic control a terminal may be the goal)."""
    return str(env.spec.entry_point).startswith("gymnasium.envs.mujoco")


def failed_episodes(returns, terminated):
    """The episodes a MuJoCo expert fails (DESIGN.md ships one only if it fails none of 50): those that end by
    terminating before the time limit, and those below half the median return."""
    return terminated | (returns < 0.5 * np.median(returns))


def failure_warning(returns, terminated, episodes):
    """One warning line on the failed episodes of a MuJoCo expert, or None if it fails none."""
    failed, low = failed_episodes(returns, terminated), returns < 0.5 * np.median(returns)
    if not failed.any():
        return None
    return (
        f"warning: {failed.sum()} of the {len(returns)} {episodes} fail ({terminated.sum()} fall before the time limit, "
        f"{low.sum()} return below half the median {np.median(returns):.1f}); DESIGN.md ships an expert only if none does."
    )


# ---- checking a folder: what --check prints, and what every folder demos.py writes passes before it is written ----

REQUIRED_FIELDS = ("env_id", "observation_shape", "action_shape", "expert_return_mean", "random_return_mean")
DEMO_ARRAYS = ("observations", "actions", "rewards", "next_observations", "terminations", "truncations", "episode_starts")


def brief(error):
    return " ".join(str(error).split())[:200]


def some(episodes):
    """`episode 3`, or `episode 3 (and 4 more)`: the first of the episodes a problem concerns."""
    return f"episode {episodes[0]}" + (f" (and {len(episodes) - 1} more)" if len(episodes) > 1 else "")


def read_folder(folder):
    """(expert.json as a dict, demos.npz's arrays, [(problem, fix)] of reading them), None for what cannot be read."""
    info, demos, problems = None, None, []
    try:
        info = json.loads((folder / "expert.json").read_text())
        if not isinstance(info, dict):
            info, problems = None, [("expert.json holds no JSON object", "rebuild")]
    except FileNotFoundError:
        problems.append(("there is no expert.json", "write"))
    except (OSError, ValueError) as error:
        problems.append((f"expert.json is not readable JSON ({brief(error)})", "rebuild"))
    try:
        with np.load(folder / "demos.npz") as data:
            demos = {key: data[key] for key in data.files}
    except FileNotFoundError:
        problems.append(("there is no demos.npz", "rebuild"))
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        problems.append((f"demos.npz is corrupt or no npz archive ({type(error).__name__}: {brief(error)})", "rebuild"))
    return info, demos, problems


def info_problems(info, env):
    """What in expert.json (a dict) keeps the scripts from using it in env: [(problem, fix)], fix a key of `fix_hint`."""
    problems = [(f"expert.json has no {key}", "complete") for key in REQUIRED_FIELDS if key not in info]
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    fits = {
        "observation_shape": list(env.observation_space.shape),
        "action_shape": list(env.action_space.shape),
        "action_space": "discrete" if discrete else "box",
        "num_actions": int(env.action_space.n) if discrete else None,
    }
    problems += [
        (f"expert.json gives {key} {info[key]!r}, but {env.spec.id} has {value!r}", "env")
        for key, value in fits.items()
        if key in info and info[key] != value
    ]
    if "env_id" in info and not isinstance(info["env_id"], str):
        problems.append((f"expert.json gives env_id {info['env_id']!r}, which is no env id", "json"))
    returns = {key: info[key] for key in ("expert_return_mean", "random_return_mean") if key in info}
    finite = {key: value for key, value in returns.items() if type(value) in (int, float) and np.isfinite(value)}
    problems += [(f"expert.json's {key} {returns[key]!r} is no finite number", "refill") for key in returns.keys() - finite]
    if len(finite) == 2 and finite["expert_return_mean"] == finite["random_return_mean"]:
        problems.append(
            (
                f"expert.json's expert_return_mean and random_return_mean are both {finite['expert_return_mean']}, "
                f"which leaves the normalized score (R - R_random) / (R_expert - R_random) undefined",
                "tie",
            )
        )
    return problems


def demos_problems(demos, env):
    """What in demos.npz's arrays keeps the scripts from imitating them in env: a list of sentences (the fix of each is to
    rebuild the folder)."""
    missing = [key for key in DEMO_ARRAYS if key not in demos]
    if missing:
        return [f"demos.npz has no {', '.join(missing)} (it holds {', '.join(demos) or 'nothing'})"]
    n, space, env_id = len(np.atleast_1d(demos["rewards"])), env.action_space, env.spec.id
    obs_shape, starts = env.observation_space.shape, demos["episode_starts"]
    shapes = dict(
        observations=obs_shape, next_observations=obs_shape, actions=space.shape, rewards=(), terminations=(), truncations=()
    )
    problems = [
        f"demos.npz holds {key} of shape {demos[key].shape}, where {env_id} and {n} rewards need {(n, *shape)}"
        for key, shape in shapes.items()
        if demos[key].shape != (n, *shape)
    ]
    if not (starts.ndim == 1 and np.issubdtype(starts.dtype, np.integer) and len(starts) and starts[0] == 0) or not (
        (np.diff(starts) > 0).all() and starts[-1] < n
    ):
        problems.append(
            f"demos.npz's episode_starts {starts[:5].tolist()}... are not increasing indices from 0 below its {n} transitions"
        )
    if problems:
        return problems  # what follows reads the arrays by these shapes and episodes
    for key in ("observations", "next_observations", "actions", "rewards"):
        finite = np.isfinite(demos[key].reshape(n, -1)).all(1) if np.issubdtype(demos[key].dtype, np.number) else None
        if finite is None or not finite.all():
            problems.append(
                f"demos.npz holds {key} of dtype {demos[key].dtype}, not numbers"
                if finite is None
                else f"demos.npz holds non-finite {key} (the first at transition {np.flatnonzero(~finite)[0]})"
            )
    actions = demos["actions"]
    if isinstance(space, gym.spaces.Discrete) and not np.issubdtype(actions.dtype, np.integer):
        problems.append(f"demos.npz holds {actions.dtype} actions, where {env_id}'s are integer indices")
    elif not problems:
        low, high = (space.low, space.high) if isinstance(space, gym.spaces.Box) else (0, space.n - 1)
        outside = np.flatnonzero(((actions < low) | (actions > high)).reshape(n, -1).any(1))
        if len(outside):
            problems.append(f"demos.npz holds actions outside {env_id}'s {space} (the first at transition {outside[0]})")
    for key in ("terminations", "truncations"):
        if demos[key].dtype != bool and not np.isin(demos[key], (0, 1)).all():
            problems.append(f"demos.npz's {key} are not 0/1 flags (it holds {np.unique(demos[key])[:5].tolist()})")
    if problems:
        return problems
    terminal, ends = demos["terminations"].astype(bool), (demos["terminations"] | demos["truncations"]).astype(bool)
    stops = np.append(starts[1:], n)
    last, lengths, limit = stops - 1, stops - starts, env.spec.max_episode_steps
    unended = np.flatnonzero(~ends[last])
    if len(unended):
        problems.append(f"demos.npz's {some(unended)} ends in neither a termination nor a truncation")
    inside = np.setdiff1d(np.flatnonzero(ends), last)
    if len(inside):
        episodes = np.searchsorted(starts, inside, side="right") - 1
        problems.append(f"demos.npz flags an episode end inside {some(episodes)}: its episode_starts and flags disagree")
    longer = np.flatnonzero(lengths > limit) if limit else []
    if len(longer):
        problems.append(f"demos.npz's {some(longer)} lasts {lengths[longer[0]]} steps, beyond {env_id}'s limit of {limit}")
    fell = np.flatnonzero(terminal[last]) if env.spec.name in NEVER_TERMINATE else []
    if len(fell):
        at_limit = " (its time limit: a timeout stored as a terminal)" if lengths[fell[0]] == limit else ""
        problems.append(
            f"demos.npz's {some(fell)} ends as a terminal at step {lengths[fell[0]]}{at_limit}, but {env_id} never terminates"
        )
    return problems


def policy_problems(spec, env, folder, file=None):
    """Why the policy that expert.json's spec describes (its file in folder, unless given) cannot act in env: [] if it can."""
    try:
        file = file or Path(folder) / spec["file"]
        _, misfit = build_policy(spec, file, env)
    except POLICY_ERRORS as error:
        return [(f"the policy that expert.json describes does not load ({type(error).__name__}: {brief(error)})", "policy")]
    return [(misfit, "policy")] if misfit else []


def folder_problems(info, demos, env, folder, policy_file=None):
    """Every problem that keeps the scripts from using an expert folder (expert.json as a dict, demos.npz's arrays, either
    None where unread) in env: what --check prints, and what keeps demos.py from writing a folder."""
    problems = info_problems(info, env) if info is not None else []
    if info is not None and "policy" in info:
        problems += policy_problems(info["policy"], env, folder, policy_file)
    return problems + [(problem, "rebuild") for problem in (demos_problems(demos, env) if demos is not None else [])]


def fix_hint(kind, folder, env_id):
    """What to run for a problem of this kind in the expert folder at folder, checked against env_id."""
    demos = f"python cleanil/demos.py --env-id {env_id} --expert-path {shlex.quote(str(folder))}"
    rebuild = f"rebuild the folder with `{demos} --from-<minari|d4rl|sb3|npz|policy> <source> --overwrite`"
    return {
        "complete": f"`{demos} --complete` fills it in",
        "write": f"`{demos} --complete` writes one for its demos.npz",
        "refill": f"delete it from expert.json and `{demos} --complete` measures it again",
        "tie": f"`{demos} --complete --expert-return-mean <the expert's return>` sets the expert's",
        "json": f"fix expert.json, or {rebuild}",
        "env": f"is {env_id} the env it was recorded in? `python cleanil/demos.py --check {shlex.quote(str(folder))} --env-id "
        f"<env>` checks it against another; else {rebuild}",
        "noenv": f"`python cleanil/demos.py --check {shlex.quote(str(folder))} --env-id <env>` names the env to check it in",
        "rebuild": rebuild,
        "policy": f"record the folder again from a working policy (`{demos} --from-policy <run folder> --overwrite`), or "
        f'delete "policy" from expert.json (only dagger.py needs it)',
    }[kind]


def check_folder(folder, env_id):
    """--check: one `error:` line per problem, each with what to run, and exit status 1; or `ok: ...`, after a warning
    where a MuJoCo expert's demo episodes fail."""
    folder = Path(folder)
    if not folder.is_dir():
        sys.exit(f"error: {folder} is no folder; {fix_hint('rebuild', folder, env_id or '<env>')}.")
    info, demos, problems = read_folder(folder)
    env_id = env_id or (info or {}).get("env_id")
    env = make_env(env_id, 0) if isinstance(env_id, str) else None
    problems = problems + folder_problems(info, demos, env, folder) if env else [*problems, ("it names no env", "noenv")]
    for problem, kind in problems:
        print(f"error: {folder}: {problem}; {fix_hint(kind, folder, env_id)}.", file=sys.stderr)
    if problems:
        sys.exit(1)
    starts, rewards, terminal = demos["episode_starts"], demos["rewards"].astype(np.float64), demos["terminations"]
    returns, terminated = np.add.reduceat(rewards, starts), terminal[np.append(starts[1:], len(rewards)) - 1].astype(bool)
    warning = failure_warning(returns, terminated, "demo episodes") if is_mujoco(env) else None
    if warning:
        print(warning, file=sys.stderr)
    other = f" (recorded on {info['env_id']}: the scripts take it with --any-env)" if info["env_id"] != env.spec.id else ""
    print(
        f"ok: {folder}: {env.spec.id}{other}, {len(starts)} episodes ({terminated.sum()} ending in a terminal), "
        f"{len(rewards)} transitions, demo return {returns.mean():.2f} +/- {returns.std():.2f}, expert_return_mean "
        f"{info['expert_return_mean']:.2f}, random_return_mean {info['random_return_mean']:.2f}"
        + (", a policy for dagger.py." if "policy" in info else ".")
    )


# ---- expert.json: the two returns of the normalized score ----


def normalization_returns(info, args, reference, policy_returns, demo_returns):
    """info with the two returns of the normalized score where it lacks them (--expert-return-mean replaces its own),
    each with where it came from: the order of the module docstring."""
    if args.expert_return_mean is not None:
        expert = {"expert_return_mean": args.expert_return_mean, "expert_return_source": "--expert-return-mean"}
    elif "ref_max_score" in reference:
        expert = {
            "expert_return_mean": reference["ref_max_score"],
            "expert_return_source": "the Minari dataset's ref_max_score",
        }
    elif policy_returns is not None:
        expert = {
            "expert_return_mean": float(policy_returns.mean()),
            "expert_return_std": float(policy_returns.std()),
            "expert_episodes": len(policy_returns),
            "expert_return_source": "the policy's deterministic episodes",
        }
    else:
        expert = {
            "expert_return_mean": float(demo_returns.mean()),
            "expert_return_std": float(demo_returns.std()),
            "expert_episodes": len(demo_returns),
            "expert_return_source": "the demos' mean return",
        }
    info = {**info, **expert} if args.expert_return_mean is not None or "expert_return_mean" not in info else dict(info)
    if "random_return_mean" not in info and "ref_min_score" in reference:
        info.update(random_return_mean=reference["ref_min_score"], random_return_source="the Minari dataset's ref_min_score")
    elif "random_return_mean" not in info:
        random_returns = random_policy_returns(args.env_id)
        info.update(
            random_return_mean=float(random_returns.mean()),
            random_return_std=float(random_returns.std()),
            random_episodes=len(random_returns),
            random_return_source="a uniformly random policy",
        )
    if info.get("random_return_mean") == info["expert_return_mean"]:
        sys.exit(
            f"error: the expert return {info['expert_return_mean']} equals the random return, which leaves the "
            f"normalized score undefined; pass the expert's with --expert-return-mean."
        )
    return info


# ---- the env, and the random return every expert.json holds ----


def make_env(env_id, seed):
    """The env as the scripts' make_env builds it (without their video): episode statistics and a seeded action space."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as error:
        sys.exit(f"error: unknown environment id {env_id!r} ({error}); use a registered Gymnasium id such as Hopper-v4.")
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env.action_space.seed(seed)
    return env


# a random return that expert.json lacks: the mean of this many uniformly random episodes (>= 50, as DESIGN.md asks),
# from one fixed seed, so that every run and every seed of a benchmark divides by the same constant
RANDOM_RETURN_EPISODES = 50
RANDOM_RETURN_SEED = 30_000


def random_policy_returns(env_id):
    """Returns of a uniformly random policy in RANDOM_RETURN_EPISODES episodes, on an env of its own (the run's envs and
    their random streams stay untouched), with a progress bar: the random return of a folder whose expert.json has none."""
    env = make_env(env_id, RANDOM_RETURN_SEED)
    returns = []
    for episode in tqdm(range(RANDOM_RETURN_EPISODES), desc=f"{env_id}: random_return_mean", file=sys.stderr, mininterval=2.0):
        env.reset(seed=RANDOM_RETURN_SEED if episode == 0 else None)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
        returns.append(info["episode"]["r"])
    env.close()
    return np.array(returns, dtype=np.float64)


def package_versions():
    import importlib.metadata as metadata

    return {name: metadata.version(name) for name in ("torch", "gymnasium", "mujoco", "numpy", "tyro")}


def write_json(path, value):
    """A JSON file written whole or not at all (a run stopped while writing never leaves half a file)."""
    Path(f"{path}.tmp").write_text(json.dumps(value, indent=2) + "\n")
    os.replace(f"{path}.tmp", path)


if __name__ == "__main__":
    args = tyro.cli(Args)
    given = [f"--from-{name}" for name in SOURCES if getattr(args, f"from_{name}") is not None]
    given += ["--complete"] * args.complete + ["--check"] * (args.check is not None)
    if len(given) != 1:
        sys.exit(
            f"error: name exactly one source, --from-minari, --from-d4rl, --from-sb3, --from-npz or --from-policy, or "
            f"--complete or --check ({'got ' + ' and '.join(given) if given else 'got none'})."
        )
    if args.check is not None:
        check_folder(args.check, args.env_id)
        sys.exit(0)
    source_flag = given[0]
    source = None if args.complete else getattr(args, source_flag[2:].replace("-", "_"))
    for name in ("num_demo_episodes", "policy_demo_episodes", "expert_eval_episodes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.action_tolerance < 0 or args.sb3_return_tolerance < 0:
        sys.exit("error: --action-tolerance and --sb3-return-tolerance must be >= 0.")
    if source is not None and source_flag != "--from-minari" and not Path(source).exists():
        sys.exit(f"error: {source_flag} {source}: no such file or folder.")

    # the env: named, or the one the dataset, the policy or the folder records
    reference, policy_info, policy_file = {}, {}, None
    if source_flag == "--from-minari":
        transitions, recorded_env_id, reference = load_minari(source)
        if args.env_id and recorded_env_id and args.env_id != recorded_env_id:
            print(f"note: the dataset was recorded in {recorded_env_id}; converting it for --env-id {args.env_id}.")
        args.env_id = args.env_id or recorded_env_id
    elif source_flag == "--from-policy":
        policy_info, policy_file = find_policy(source)
        args.env_id = args.env_id or policy_info.get("env_id")
    elif args.complete and args.env_id is None and args.expert_path is not None:
        recorded_env_id = (read_folder(Path(args.expert_path))[0] or {}).get("env_id")
        args.env_id = recorded_env_id if isinstance(recorded_env_id, str) else None
    if args.env_id is None:
        sys.exit(f"error: --env-id is required with {source_flag}: the env whose observations and actions the demos hold.")
    env = make_env(args.env_id, args.seed)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if not isinstance(env.observation_space, gym.spaces.Box) or not (discrete or isinstance(env.action_space, gym.spaces.Box)):
        sys.exit(
            f"error: cleanil's scripts need Box observations and Box or Discrete actions, but {args.env_id} has "
            f"{env.observation_space} and {env.action_space}."
        )
    expert_dir = Path(args.expert_path or Path(__file__).resolve().parent.parent / "experts" / args.env_id)
    info_path, demos_path = expert_dir / "expert.json", expert_dir / "demos.npz"
    if args.complete and not demos_path.exists():
        sys.exit(
            f"error: --complete fills in expert.json for the demos.npz in {expert_dir}, but there is none; convert your "
            f"demonstrations into it with --from-minari, --from-d4rl, --from-sb3, --from-npz or --from-policy."
        )
    if not args.complete and (info_path.exists() or demos_path.exists()) and not args.overwrite:
        sys.exit(f"error: {expert_dir} already holds an expert; pass --overwrite to replace it, or another --expert-path.")

    policy, policy_returns, policy_terminated, notes, label = None, None, None, [], f"{source_flag} {source}"
    if args.complete:
        # the folder's demos as they are, and what its expert.json holds already (a wrong value is not overwritten)
        info, demos, problems = read_folder(expert_dir)
        problems = [problem for problem in problems if problem[0] != "there is no expert.json"]
        problems += [problem for problem in info_problems(info or {}, env) if problem[1] != "complete"]
        problems += [(problem, "rebuild") for problem in (demos_problems(demos, env) if demos is not None else [])]
        if problems:
            problem, kind = problems[0]
            sys.exit(f"error: --complete leaves {expert_dir} as it is: {problem}; {fix_hint(kind, expert_dir, args.env_id)}.")
        info, label = info or {}, str(demos_path)
        returns = np.add.reduceat(demos["rewards"].astype(np.float64), demos["episode_starts"])
    else:
        # every source as per-transition arrays
        names = {
            key: getattr(args, f"npz_{key}_key")
            for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations", "episode_starts")
        }
        defaults = {field.name: field.default for field in dataclasses.fields(Args)}
        if source_flag == "--from-d4rl":
            transitions, notes = load_d4rl(source)
        elif source_flag == "--from-sb3":
            transitions, notes = load_sb3(source, env, args.sb3_return_tolerance)
        elif source_flag == "--from-npz":
            named_by_user = {key for key in names if names[key] != defaults[f"npz_{key}_key"]}
            transitions, notes = load_npz(source, names, named_by_user, {"observations", "actions", "rewards"}, env)
        elif source_flag == "--from-policy":
            policy = load_policy(source, policy_info, policy_file, env)
            transitions, policy_returns, policy_terminated = record_policy(
                policy, env, args.num_demo_episodes or args.policy_demo_episodes, args.expert_eval_episodes, args.seed
            )
        transitions = check_transitions(transitions, env, args.action_tolerance, label)

        # whole episodes, their returns, and what is left out
        episodes, left_over = split_episodes(transitions["ends"], transitions["terminals"], transitions["timeouts"])
        if not episodes:
            sys.exit(f"error: {label} holds no whole episode (none ends in a terminal or a timeout).")
        if args.num_demo_episodes is not None and args.num_demo_episodes > len(episodes):
            sys.exit(
                f"error: --num-demo-episodes {args.num_demo_episodes} asks for more episodes than the {len(episodes)} "
                f"whole ones in {label}; pass at most {len(episodes)}."
            )
        episodes = episodes[: args.num_demo_episodes]
        returns = np.array([transitions["rewards"][start:stop].sum() for start, stop in episodes])
        demos = assemble_demos(transitions, episodes, args.float16_observations)
        if len(demos["rewards"]) == 0:
            sys.exit(
                f"error: {label} holds only one-step episodes and no next observations, which leaves no transition to keep."
            )
        if left_over:
            notes.append(
                f"left out {left_over} transitions that end no episode (a recording cut short: no terminal or timeout)"
            )
        if "next_observations" not in transitions:
            notes.append(
                f"{label} records no next observations: s'_t = s_(t+1), and each episode's last transition, whose "
                f"successor was never recorded, is left out (that episode then ends in a timeout)"
            )
        info = {}

    # expert.json: what the scripts read, where each number comes from, and how the folder was built
    info = normalization_returns(info, args, reference, policy_returns, returns)
    info = {
        "env_id": args.env_id,
        **info,
        "observation_shape": list(env.observation_space.shape),
        "action_shape": list(env.action_space.shape),
        "action_space": "discrete" if discrete else "box",
        **({"num_actions": int(env.action_space.n)} if discrete else {}),
    }
    earlier = info.get("command", []) if args.complete else policy_info.get("command", [])
    # every command that built the folder (a trainer's policy.json or a hand-written expert.json may hold one string)
    info["command"] = [*([earlier] if isinstance(earlier, str) else earlier), " ".join(["python", *sys.argv])]
    info["versions"] = package_versions()
    if not args.complete:
        info["source"] = {"flag": source_flag, "path": str(source), "notes": notes}
    terminated, truncated = int(demos["terminations"].sum()), int(demos["truncations"].sum())
    info["demos"] = {
        **(info.get("demos", {}) if args.complete else {}),
        "file": "demos.npz",
        "episodes": len(demos["episode_starts"]),
        "transitions": len(demos["rewards"]),
        "terminated": terminated,
        "truncated": truncated,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "observation_dtype": str(demos["observations"].dtype),
        **({"policy": "deterministic", "seed": args.seed} if policy is not None else {}),
    }
    warnings = []
    if policy is not None:
        info.update({key: policy_info[key] for key in TRAINING_KEYS if key in policy_info})
        info.update(seed=policy_info.get("seed", args.seed), policy={**policy_info["policy"], "file": "policy.pt"})
        weak = expert_weakness(
            policy_returns.mean(), info["random_return_mean"], policy_info.get("best_eval_return"), env.spec.reward_threshold
        )
        warnings += [f"warning: the expert {weak}; train longer (--total-timesteps) before imitating it."] if weak else []
        if is_mujoco(env):
            failed = failed_episodes(policy_returns, policy_terminated)
            info.update(expert_failed_episodes=int(failed.sum()), expert_terminated_episodes=int(policy_terminated.sum()))
            warnings.append(failure_warning(policy_returns, policy_terminated, "evaluation episodes of the expert"))

    # nothing is written unless the folder passes --check; then demos and policy, and expert.json (read first) last
    problems = folder_problems(info, demos, env, expert_dir, policy_file)
    if problems:
        sys.exit(f"error: {label} gives a folder that `demos.py --check` refuses: {problems[0][0]}; nothing was written.")
    expert_dir.mkdir(parents=True, exist_ok=True)
    if not args.complete:
        np.savez_compressed(demos_path, **demos)
    if policy is not None and Path(policy_file).resolve() != (expert_dir / "policy.pt").resolve():
        shutil.copyfile(policy_file, expert_dir / "policy.pt")
    write_json(info_path, info)
    for note in notes:
        print(f"note: {note}.")
    for warning in filter(None, warnings):
        print(warning, file=sys.stderr)
    print(
        f"wrote {expert_dir}: {len(demos['episode_starts'])} episodes ({terminated} ending in a terminal, {truncated} in a "
        f"timeout), {len(demos['rewards'])} transitions, return {returns.mean():.2f} +/- {returns.std():.2f} (min "
        f"{returns.min():.2f}, max {returns.max():.2f}); expert_return_mean {info['expert_return_mean']:.2f} "
        f"({info.get('expert_return_source', 'as it was')}), random_return_mean {info['random_return_mean']:.2f} "
        f"({info.get('random_return_source', 'as it was')})."
    )
    env.close()
