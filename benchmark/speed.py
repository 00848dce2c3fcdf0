"""CPU time per SAC learning step of cleanil's SAC-family scripts (--bf16 and --no-bf16), optionally next to CleanRL's.

    python benchmark/speed.py --env-ids Hopper-v4 Humanoid-v4 [--cleanrl /path/to/cleanrl/sac_continuous_action.py]

Each script runs twice per env, for learning_starts + short and learning_starts + long environment steps, one thread,
in a scratch folder; the difference of the two runs' CPU times over the difference of their lengths is the CPU time
of one learning step (env step, acting and one SAC update), free of start-up, random steps and evaluation. CPU time,
not wall time, is the fair figure on a shared machine. The runs alternate between scripts, so load drifts hit all of
them alike. CleanRL is not part of cleanil: give the path of a checkout's script (its cleanrl_utils and tensorboard
must import; --cleanrl-pythonpath adds folders to its PYTHONPATH).
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(command, cwd, env):
    before = child_cpu_seconds()
    result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(map(str, command))} failed:\n{result.stderr[-2000:]}")
    return child_cpu_seconds() - before


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-ids", nargs="+", default=["Hopper-v4", "Humanoid-v4"])
    parser.add_argument("--scripts", nargs="+", default=["sac.py"], help="cleanil scripts to time (sac.py, cfil.py, nail.py)")
    parser.add_argument("--cleanrl", help="path of cleanrl/sac_continuous_action.py to time alongside")
    parser.add_argument(
        "--cleanrl-pythonpath", default="", help="extra PYTHONPATH for CleanRL (its cleanrl_utils, tensorboard)"
    )
    parser.add_argument("--learning-starts", type=int, default=5000)
    parser.add_argument("--short", type=int, default=1000, help="learning steps of the short run")
    parser.add_argument("--long", type=int, default=4000, help="learning steps of the long run")
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    variants = []
    if args.cleanrl:
        variants.append(
            (
                "cleanrl",
                lambda steps, env_id: [
                    sys.executable,
                    args.cleanrl,
                    "--env-id",
                    env_id,
                    "--total-timesteps",
                    steps,
                    "--learning-starts",
                    args.learning_starts,
                ],
            )
        )
    for script in args.scripts:
        for precision in ("--no-bf16", "--bf16"):
            variants.append(
                (
                    f"{script} {precision}",
                    lambda steps, env_id, script=script, precision=precision: [
                        sys.executable,
                        REPO / "cleanil" / script,
                        "--env-id",
                        env_id,
                        "--total-timesteps",
                        steps,
                        "--learning-starts",
                        args.learning_starts,
                        "--eval-frequency",
                        10**9,
                        "--eval-episodes",
                        1,
                        precision,
                    ],
                )
            )
    for env_id in args.env_ids:
        cpu = {name: {} for name, _ in variants}
        for length in (args.short, args.long):
            for name, command in variants:
                with tempfile.TemporaryDirectory() as scratch:
                    run_env = {**env, "PYTHONPATH": args.cleanrl_pythonpath} if name == "cleanrl" else env
                    cpu[name][length] = timed_run(
                        [str(c) for c in command(args.learning_starts + length, env_id)], scratch, run_env
                    )
        per_step = {name: (times[args.long] - times[args.short]) / (args.long - args.short) for name, times in cpu.items()}
        reference = per_step.get("cleanrl")
        for name, seconds in per_step.items():
            ratio = f"  {reference / seconds:.2f}x cleanrl" if reference else ""
            print(
                f"{env_id:14s} {name:22s} {1000 * seconds:7.2f} ms CPU per learning step  {1 / seconds:6.1f} steps/s{ratio}",
                flush=True,
            )


if __name__ == "__main__":
    main()
