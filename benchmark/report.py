"""Aggregate cleanil runs into benchmark/results.md and benchmark/plots/<env-id>.png (`./benchmark.sh report`).

Reads only what every script writes (DESIGN.md, "Logging and outputs"): runs/<run_name>/summary.json for the final
numbers and eval.csv for the learning curves. A run without summary.json (still running, killed, crashed) is left
out. Runs are grouped by (exp_name, env_id), exp_name being the algorithm (or `<algo>_<tag>` for a tagged sweep);
if one (exp_name, env_id, seed) finished more than once, the latest run counts.

Statistics: mean +/- std over seeds (population std, ddof=0); the IQM of an algorithm is the interquartile mean of
all its per-run final normalized scores pooled over envs (the 25% trimmed mean of Agarwal et al. 2021,
arXiv 2108.13264, = scipy.stats.trim_mean(x, 0.25)). Envs without expert.json have NaN normalized scores: they
are left out of the IQM and their plots show returns instead, which results.md says.
"""
import argparse
import csv
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display (cluster nodes, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def interquartile_mean(values):
    """Mean of the middle 50%: drop floor(n/4) values at each end of the sorted scores (scipy's trim_mean)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(0.25 * len(values))
    return float(values[cut: len(values) - cut].mean())


def read_eval_csv(path):
    with open(path) as f:
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
    return {key: np.array([row[key] for row in rows]) for key in (rows[0] if rows else ())}


def load_runs(runs_dir):
    """Finished runs as dicts (exp_name, env_id, seed, summary, curve), the latest per (exp_name, env_id, seed)."""
    latest, unfinished, replaced, unreadable = {}, 0, 0, []
    for eval_path in sorted(Path(runs_dir).rglob("eval.csv")):
        run_dir = eval_path.parent
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            unfinished += 1
            continue
        try:
            summary = json.loads(summary_path.read_text())
            args = summary["args"]
            run = {"dir": run_dir, "exp_name": args["exp_name"], "env_id": args["env_id"], "seed": int(args["seed"]),
                   "summary": summary, "curve": read_eval_csv(eval_path), "mtime": summary_path.stat().st_mtime}
            if len(run["curve"].get("global_step", ())) == 0:
                raise ValueError("eval.csv has no rows")
        except (ValueError, KeyError, TypeError, OSError) as error:
            unreadable.append(f"{run_dir} ({error!r})")
            continue
        key = (run["exp_name"], run["env_id"], run["seed"])
        if key in latest:
            replaced += 1
            if latest[key]["mtime"] > run["mtime"]:
                continue
        latest[key] = run
    return list(latest.values()), {"unfinished": unfinished, "replaced": replaced, "unreadable": unreadable}


def mean_std(values, digits):
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def format_duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def is_finite(value):
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def curve_band(curves, key):
    """Mean and std over runs on a common step grid (the union of their eval steps, up to the shortest run)."""
    last_step = min(curve["global_step"][-1] for curve in curves)
    grid = np.unique(np.concatenate([curve["global_step"] for curve in curves]))
    grid = grid[grid <= last_step]
    values = np.stack([np.interp(grid, curve["global_step"], curve[key]) for curve in curves])
    return grid, values.mean(0), values.std(0)


def plot_env(env_id, runs_by_algo, path):
    """Learning curves of one env, one line per algorithm: normalized score if every run has one, else returns."""
    missing = sorted(algo for algo, runs in runs_by_algo.items()
                     if not all(np.isfinite(run["curve"]["normalized_score"]).all() for run in runs))
    normalized = not missing
    key = "normalized_score" if normalized else "eval_return_mean"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for algo, runs in sorted(runs_by_algo.items()):
        steps, mean, std = curve_band([run["curve"] for run in runs], key)
        line, = ax.plot(steps, mean, label=f"{algo} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    if normalized:
        ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="expert")
        ax.axhline(0.0, color="gray", linestyle=":", linewidth=0.8, label="random")
        ax.set_ylabel("normalized score (mean ± std over seeds)")
        ax.set_title(env_id)
    else:
        ax.set_ylabel("evaluation return (mean ± std over seeds)")
        ax.set_title(f"{env_id}: returns (normalized score n/a for {', '.join(missing)}: no expert.json)", fontsize=9)
    ax.set_xlabel("environment steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default=str(REPO / "runs"), help="folder of run folders (default: runs/ of the repo)")
    parser.add_argument("--output-dir", default=str(REPO / "benchmark"),
                        help="where results.md and plots/ go (default: benchmark/ of the repo)")
    parser.add_argument("--algos", default="", help='only these exp_names, e.g. "bc gail" (default: all)')
    parser.add_argument("--env-ids", default="", help='only these env ids, e.g. "Hopper-v4 Ant-v4" (default: all)')
    args = parser.parse_args()

    runs_dir, output_dir = Path(args.runs_dir), Path(args.output_dir)
    if not runs_dir.is_dir():
        sys.exit(f"error: no runs folder at {runs_dir}; run ./benchmark.sh first, or pass --runs-dir (or --workdir) of a sweep.")
    runs, skipped = load_runs(runs_dir)
    algos, env_ids = set(args.algos.split()), set(args.env_ids.split())
    runs = [run for run in runs if (not algos or run["exp_name"] in algos) and (not env_ids or run["env_id"] in env_ids)]
    if not runs:
        sys.exit(f"error: no finished runs (runs/<run>/summary.json) under {runs_dir} match the filters; "
                 "run ./benchmark.sh first, or check --runs-dir, --algos and --env-ids.")

    groups = defaultdict(list)  # (algo, env) -> runs sorted by seed
    for run in sorted(runs, key=lambda run: (run["exp_name"], run["env_id"], run["seed"])):
        groups[run["exp_name"], run["env_id"]].append(run)
    algo_names = sorted({algo for algo, _ in groups})
    env_names = sorted({env for _, env in groups})

    lines = [
        "# cleanil benchmark results", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `benchmark/report.py` from {len(runs)} finished runs in "
        f"`{runs_dir}`. Normalized score = (R - R_random) / (R_expert - R_random) with both constants from the env's "
        "expert.json (1 = expert, 0 = random policy); final = the last evaluation of each run; mean ± std over seeds "
        "(ddof=0). Steps/s and wall time are the per-run means from summary.json.", "",
        "## Final scores per algorithm and environment", "",
        "| algorithm | environment | seeds | steps | final normalized score | final return | steps/s | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    no_expert = set()
    for (algo, env_id), group in groups.items():
        summaries = [run["summary"] for run in group]
        scores = [s.get("final_normalized_score") for s in summaries]
        finite = [score for score in scores if is_finite(score)]
        if not finite:
            no_expert.add(f"{algo} on {env_id}")
            score_text = "n/a (no expert.json)"
        else:
            score_text = mean_std(finite, 3) + ("" if len(finite) == len(scores) else f" ({len(finite)}/{len(scores)} seeds)")
        steps = sorted({s["args"].get("total_timesteps") for s in summaries}, key=str)
        lines.append(f"| {algo} | {env_id} | {', '.join(str(run['seed']) for run in group)} | "
                     f"{'/'.join(str(step) for step in steps)} | {score_text} | "
                     f"{mean_std([s['final_return'] for s in summaries], 1)} | "
                     f"{np.mean([s['mean_sps'] for s in summaries]):.0f} | "
                     f"{format_duration(np.mean([s['total_wall_time_s'] for s in summaries]))} |")

    lines += ["", "## Aggregate over environments (IQM)", "",
              "Interquartile mean of all per-run final normalized scores of an algorithm, pooled over its environments "
              "(25% trimmed from each end; Agarwal et al. 2021). Environments without expert.json are left out.", "",
              "| algorithm | IQM normalized score | runs | environments |", "|---|---|---|---|"]
    for algo in algo_names:
        pooled = [(run["summary"].get("final_normalized_score"), env_id)
                  for (name, env_id), group in groups.items() if name == algo for run in group]
        pooled = [(score, env_id) for score, env_id in pooled if is_finite(score)]
        if pooled:
            envs = sorted({env_id for _, env_id in pooled})
            lines.append(f"| {algo} | {interquartile_mean([score for score, _ in pooled]):.3f} | {len(pooled)} | {', '.join(envs)} |")
        else:
            lines.append(f"| {algo} | n/a (no expert.json) | 0 | |")

    plots_dir = output_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    lines += ["", "## Learning curves", "",
              "Evaluation after every `eval_frequency` steps; line = mean over seeds, band = ± 1 std.", ""]
    for env_id in env_names:
        file_name = env_id.replace("/", "_") + ".png"
        missing = plot_env(env_id, {algo: group for (algo, env), group in groups.items() if env == env_id}, plots_dir / file_name)
        note = f" (returns: normalized score n/a for {', '.join(missing)}, no expert.json)" if missing else ""
        lines += [f"### {env_id}{note}", "", f"![{env_id}](plots/{file_name})", ""]

    notes = []
    if skipped["unfinished"]:
        notes.append(f"{skipped['unfinished']} run folder(s) without summary.json (unfinished or failed) left out.")
    if skipped["replaced"]:
        notes.append(f"{skipped['replaced']} older duplicate run(s) of the same algorithm, env and seed left out.")
    notes += [f"unreadable run left out: {entry}" for entry in skipped["unreadable"]]
    if no_expert:
        notes.append(f"no normalized score (no expert.json when they ran) for: {', '.join(sorted(no_expert))}; "
                     "their rows show returns only, and the plots of their envs show returns.")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.md").write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {output_dir / 'results.md'} ({len(runs)} runs, {len(algo_names)} algorithms, {len(env_names)} envs) "
          f"and {len(env_names)} plot(s) in {plots_dir}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


if __name__ == "__main__":
    main()
