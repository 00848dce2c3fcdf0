"""Run any cleanil script unchanged and record, for every episode of every env it makes, what the env's reward is made of.

    python benchmark/episode_terms.py cleanil/gail.py --env-id Ant-v4 --total-timesteps 350000 --eval-frequency 50000

Each finished episode becomes one JSON line in `--terms-file` (default episode_terms.jsonl): the env's creation index
(`env`, in order of creation: in gail.py the evaluation env is 1, its episodes come `--eval-episodes` at a time), its
length, whether it terminated, the sum of every `reward_*` term MuJoCo's info carries (Ant's reward_ctrl,
reward_forward, reward_survive, ...), the mean x_velocity where the info has one, and the mean |action| after clipping
to the action space. The script's eval.csv says how well a policy scores; this says why (e.g.
a deterministic policy that survives but pays the control cost of saturated actions).
"""

import json
import runpy
import sys

import gymnasium as gym
import numpy as np


class EpisodeTerms(gym.Wrapper):
    def __init__(self, env, index, sink):
        super().__init__(env)
        self.index, self.sink = index, sink
        self.terms, self.length, self.abs_action = {}, 0, 0.0

    def reset(self, **kwargs):
        self.terms, self.length, self.abs_action = {}, 0, 0.0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.length += 1
        for key, value in info.items():
            if key.startswith("reward_") or key == "x_velocity":
                self.terms[key] = self.terms.get(key, 0.0) + float(value)
        if isinstance(self.action_space, gym.spaces.Box):
            clipped = np.clip(action, self.action_space.low, self.action_space.high)
            self.abs_action += float(np.abs(clipped).mean())
        if terminated or truncated:
            row = dict(env=self.index, length=self.length, terminated=bool(terminated), **self.terms)
            if "x_velocity" in row:
                row["x_velocity"] /= self.length
            row["mean_abs_action"] = self.abs_action / self.length
            self.sink.write(json.dumps(row) + "\n")
            self.sink.flush()
        return obs, reward, terminated, truncated, info


if __name__ == "__main__":
    terms_file = "episode_terms.jsonl"
    if sys.argv[1:2] == ["--terms-file"] and len(sys.argv) > 2:
        terms_file = sys.argv[2]
        del sys.argv[1:3]
    if len(sys.argv) < 2 or not sys.argv[1].endswith(".py"):
        sys.exit("usage: python benchmark/episode_terms.py [--terms-file FILE] cleanil/<script>.py [script args...]")
    sink, made, make = open(terms_file, "w"), [0], gym.make

    def make_recorded(*args, **kwargs):
        made[0] += 1
        return EpisodeTerms(make(*args, **kwargs), made[0], sink)

    gym.make = make_recorded
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
