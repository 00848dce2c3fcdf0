"""Aggregate cleanil runs into benchmark/results.md and benchmark/plots/<env-id>.png (`./benchmark.sh report`).

Reads only what every script writes (DESIGN.md, "Logging and outputs"): runs/<run_name>/summary.json for the final
numbers and eval.csv for the learning curves. A run without summary.json (still running, killed, crashed) is left
out. Runs are grouped by (exp_name, env_id) and by their arguments: runs whose summary.json args differ in anything
but the seed and bookkeeping (tracking, video, checkpoint folder, --resume) never share a row. exp_name is the
algorithm, `<algo>_<tag>` for a tagged sweep, and benchmark.sh appends `@<args-id>` (a hash of the sweep's extra
arguments); a row is labelled by the name without `@<args-id>` where that is unambiguous, else by it and the
arguments that tell the variants apart. If one variant's (env_id, seed) finished more than once, the latest run counts.
A run whose last evaluation is NaN (it diverged) stays out of the means and curves, and the report counts it.

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
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display (cluster nodes, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# arguments that do not change what a run learns: runs differing only in these are seeds of one setting
BOOKKEEPING_ARGS = {
    "seed",
    "exp_name",
    "env_id",
    "resume",
    "track",
    "wandb_project_name",
    "wandb_entity",
    "capture_video",
    "cuda",
    "checkpoint_dir",
    "checkpoint_frequency",
    "checkpoint_minutes",
    "refill_steps",
    "save_expert",
}
# scripts whose eval.csv global_step counts gradient steps, not environment steps (they never step the env to learn)
GRADIENT_STEP_SCRIPTS = {"bc"}


def interquartile_mean(values):
    """Mean of the middle 50%: drop floor(n/4) values at each end of the sorted scores (scipy's trim_mean)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(0.25 * len(values))
    return float(values[cut : len(values) - cut].mean())


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
            run = {
                "dir": run_dir,
                "exp_name": args["exp_name"],
                "env_id": args["env_id"],
                "seed": int(args["seed"]),
                "setting": setting_of(args),
                "summary": summary,
                "curve": read_eval_csv(eval_path),
                "mtime": summary_path.stat().st_mtime,
            }
            if len(run["curve"].get("global_step", ())) == 0:
                raise ValueError("eval.csv has no rows")
        except (ValueError, KeyError, TypeError, OSError) as error:
            unreadable.append(f"{run_dir} ({error!r})")
            continue
        key = (run["exp_name"], run["setting"], run["env_id"], run["seed"])
        if key in latest:
            replaced += 1
            if latest[key]["mtime"] > run["mtime"]:
                continue
        latest[key] = run
    return list(latest.values()), {"unfinished": unfinished, "replaced": replaced, "unreadable": unreadable}


def setting_of(args):
    """What a run learned with, as a hashable: its arguments less the seed and the bookkeeping ones."""
    return tuple(
        sorted((key, json.dumps(value, sort_keys=True)) for key, value in args.items() if key not in BOOKKEEPING_ARGS)
    )


def base_name(exp_name):
    return exp_name.split("@")[0]  # benchmark.sh's `@<args-id>` off


def variant_labels(variants):
    """{(exp_name, setting): label}: the name without `@<args-id>` where one variant has it, else the name with the
    arguments that differ between its variants (e.g. `gail [total_timesteps=500]`), so no two rows share a label."""
    by_base = defaultdict(list)
    for exp_name, setting in variants:
        by_base[base_name(exp_name)].append((exp_name, setting))
    labels = {}
    for base, group in by_base.items():
        if len(group) == 1:
            labels[group[0]] = base
            continue
        settings = [dict(setting) for _, setting in group]
        differing = sorted(
            {key for setting in settings for key in setting if any(other.get(key) != setting.get(key) for other in settings)}
        )
        for (exp_name, setting), values in zip(group, settings):
            shown = ", ".join(f"{key}={values[key]}" if key in values else f"no {key}" for key in differing)
            labels[exp_name, setting] = f"{base} [{shown}]" if shown else exp_name
    return labels


def script_of(exp_name):
    """The cleanil script an exp_name was made by (`pmi_il_long@1a2b3c4d` -> pmi_il), or None."""
    base = base_name(exp_name)
    for script in sorted((path.stem for path in (REPO / "cleanil").glob("*.py")), key=len, reverse=True):
        if base == script or base.startswith(script + "_"):
            return script
    return None


def diverged(run):
    return not math.isfinite(run["curve"]["eval_return_mean"][-1])


def has_expert(run):
    """A run had expert.json iff some evaluation has a normalized score; a diverged run's NaN returns do not count."""
    return bool(np.isfinite(run["curve"]["normalized_score"]).any()) or not np.isfinite(run["curve"]["eval_return_mean"]).any()


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
    """Mean and std over runs on a common step grid (the union of their eval steps, up to the shortest run); a run's NaN
    evaluations (it diverged) drop out of the mean where they occur."""
    last_step = min(curve["global_step"][-1] for curve in curves)
    grid = np.unique(np.concatenate([curve["global_step"] for curve in curves]))
    grid = grid[grid <= last_step]
    values = np.stack([np.interp(grid, curve["global_step"], curve[key]) for curve in curves])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every run is NaN stays NaN: no line there
        return grid, np.nanmean(values, 0), np.nanstd(values, 0)


def panels_of(curves_by_label):
    """Split the lines of one plot into panels: gradient-step methods (bc) apart from environment-step ones, and
    budgets more than 10x apart in separate panels, so a 20k-step method is not squeezed against a 300k-step axis.
    Returns [(x-axis label, [label, ...]), ...]."""
    panels = []
    for unit in ("environment steps", "gradient steps"):
        labels = sorted(
            (label for label, (curve_unit, _) in curves_by_label.items() if curve_unit == unit),
            key=lambda label: max(curve["global_step"][-1] for curve in curves_by_label[label][1]),
        )
        budgets = {label: max(curve["global_step"][-1] for curve in curves_by_label[label][1]) for label in labels}
        # curves that end at step 0 (evaluated before any training) join the shortest budget's panel
        current, smallest = [label for label in labels if budgets[label] <= 0], None
        for label in (label for label in labels if budgets[label] > 0):
            if smallest is not None and budgets[label] > 10 * smallest:
                panels.append((unit, current))
                current, smallest = [], None
            smallest = budgets[label] if smallest is None else smallest
            current.append(label)
        if current:
            panels.append((unit, current))
    return panels


def plot_env(env_id, runs_by_label, path):
    """Learning curves of one env, one line per algorithm (variant): normalized score if every algorithm's runs had an
    expert.json, else returns; diverged runs' NaN evaluations left out. Returns the labels without expert.json."""
    missing = sorted(label for label, runs in runs_by_label.items() if not all(has_expert(run) for run in runs))
    normalized = not missing
    key = "normalized_score" if normalized else "eval_return_mean"
    curves_by_label = {
        label: (
            "gradient steps" if script_of(runs[0]["exp_name"]) in GRADIENT_STEP_SCRIPTS else "environment steps",
            [run["curve"] for run in runs],
        )
        for label, runs in runs_by_label.items()
    }
    panels = panels_of(curves_by_label)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, (unit, labels) in zip(axes[0], panels):
        for label in labels:
            runs = runs_by_label[label]
            steps, mean, std = curve_band(curves_by_label[label][1], key)
            seeds = len(runs)
            # a one-point curve (a method evaluated only at step 0, or a stopped run) is a marker, not an invisible line
            (line,) = ax.plot(
                steps, mean, marker="o" if len(steps) < 3 else None, label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})"
            )
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        if normalized:
            ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="expert")
            ax.axhline(0.0, color="gray", linestyle=":", linewidth=0.8, label="random")
            ax.set_ylabel("normalized score (mean ± std over seeds)")
            ax.set_title(env_id)
        else:
            ax.set_ylabel("evaluation return (mean ± std over seeds)")
            ax.set_title(f"{env_id}: returns (normalized score n/a for {', '.join(missing)}: no expert.json)", fontsize=9)
        ax.set_xlabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return missing, panels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default=str(REPO / "runs"), help="folder of run folders (default: runs/ of the repo)")
    parser.add_argument(
        "--output-dir",
        default=str(REPO / "runs" / "report"),
        help="where results.md and plots/ go (default: runs/report/ of the repo, git-ignored; "
        "--output-dir benchmark replaces the committed report)",
    )
    parser.add_argument(
        "--algos", default="", help='only these exp_names (with or without @<args-id>), e.g. "bc gail" (default: all)'
    )
    parser.add_argument("--env-ids", default="", help='only these env ids, e.g. "Hopper-v4 Ant-v4" (default: all)')
    args = parser.parse_args()

    runs_dir, output_dir = Path(args.runs_dir), Path(args.output_dir)
    if not runs_dir.is_dir():
        sys.exit(
            f"error: no runs folder at {runs_dir}; run ./benchmark.sh first, or pass --runs-dir (or --workdir) of a sweep."
        )
    runs, skipped = load_runs(runs_dir)
    algos, env_ids = set(args.algos.split()), set(args.env_ids.split())
    runs = [
        run
        for run in runs
        if (not algos or run["exp_name"] in algos or base_name(run["exp_name"]) in algos)
        and (not env_ids or run["env_id"] in env_ids)
    ]
    if not runs:
        sys.exit(
            f"error: no finished runs (runs/<run>/summary.json) under {runs_dir} match the filters; "
            "run ./benchmark.sh first, or check --runs-dir, --algos and --env-ids."
        )

    labels = variant_labels({(run["exp_name"], run["setting"]) for run in runs})
    groups = defaultdict(list)  # (label, env) -> runs sorted by seed
    for run in sorted(runs, key=lambda run: (labels[run["exp_name"], run["setting"]], run["env_id"], run["seed"])):
        groups[labels[run["exp_name"], run["setting"]], run["env_id"]].append(run)
    algo_names = sorted({algo for algo, _ in groups})
    env_names = sorted({env for _, env in groups})

    lines = [
        "# cleanil benchmark results",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `benchmark/report.py` from {len(runs)} finished runs in "
        f"`{runs_dir}`. Normalized score = (R - R_random) / (R_expert - R_random) with both constants from the env's "
        "expert.json (1 = expert, 0 = random policy); final = the last evaluation of each run; mean ± std over seeds "
        "(ddof=0). Steps/s and wall time are the per-run means from summary.json. Runs with different arguments are "
        "different rows.",
        "",
        "## Final scores per algorithm and environment",
        "",
        "| algorithm | environment | seeds | steps | final normalized score | final return | steps/s | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    no_expert, diverged_runs = set(), []
    for (algo, env_id), group in groups.items():
        finished = [run for run in group if not diverged(run)]
        diverged_runs += [f"{algo} on {env_id} seed {run['seed']}" for run in group if diverged(run)]
        summaries = [run["summary"] for run in finished]
        finite = [score for score in (s.get("final_normalized_score") for s in summaries) if is_finite(score)]
        if not all(has_expert(run) for run in group):
            no_expert.add(f"{algo} on {env_id}")
            score_text = "n/a (no expert.json)"
        elif not finite:
            score_text = "n/a (every seed diverged)"
        else:
            score_text = mean_std(finite, 3) + (
                "" if len(finite) == len(group) else f" ({len(finite)}/{len(group)} seeds; the rest diverged)"
            )
        steps = sorted({s["args"].get("total_timesteps") for s in (run["summary"] for run in group)}, key=str)
        return_text = mean_std([s["final_return"] for s in summaries], 1) if summaries else "NaN (diverged)"
        lines.append(
            f"| {algo} | {env_id} | {', '.join(str(run['seed']) for run in group)} | "
            f"{'/'.join(str(step) for step in steps)} | {score_text} | {return_text} | "
            f"{np.mean([run['summary']['mean_sps'] for run in group]):.0f} | "
            f"{format_duration(np.mean([run['summary']['total_wall_time_s'] for run in group]))} |"
        )

    lines += [
        "",
        "## Aggregate over environments (IQM)",
        "",
        "Interquartile mean of all per-run final normalized scores of an algorithm, pooled over its environments "
        "(25% trimmed from each end; Agarwal et al. 2021). Environments without expert.json and diverged runs are "
        "left out (listed in the notes).",
        "",
        "| algorithm | IQM normalized score | runs | environments |",
        "|---|---|---|---|",
    ]
    for algo in algo_names:
        pooled = [
            (run["summary"].get("final_normalized_score"), env_id)
            for (name, env_id), group in groups.items()
            if name == algo
            for run in group
            if not diverged(run)
        ]
        pooled = [(score, env_id) for score, env_id in pooled if is_finite(score)]
        if pooled:
            envs = sorted({env_id for _, env_id in pooled})
            lines.append(
                f"| {algo} | {interquartile_mean([score for score, _ in pooled]):.3f} | {len(pooled)} | {', '.join(envs)} |"
            )
        else:
            lines.append(f"| {algo} | n/a (no expert.json) | 0 | |")

    plots_dir = output_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    lines += [
        "",
        "## Learning curves",
        "",
        "Evaluation after every `eval_frequency` steps; line = mean over seeds, band = ± 1 std. bc counts gradient "
        "steps (its own panel); budgets more than 10x apart get separate panels.",
        "",
    ]
    for env_id in env_names:
        file_name = env_id.replace("/", "_") + ".png"
        missing, _ = plot_env(
            env_id, {algo: group for (algo, env), group in groups.items() if env == env_id}, plots_dir / file_name
        )
        note = f" (returns: normalized score n/a for {', '.join(missing)}, no expert.json)" if missing else ""
        lines += [f"### {env_id}{note}", "", f"![{env_id}](plots/{file_name})", ""]

    notes = []
    if skipped["unfinished"]:
        notes.append(f"{skipped['unfinished']} run folder(s) without summary.json (unfinished or failed) left out.")
    if skipped["replaced"]:
        notes.append(f"{skipped['replaced']} older duplicate run(s) of the same algorithm, arguments, env and seed left out.")
    notes += [f"unreadable run left out: {entry}" for entry in skipped["unreadable"]]
    if diverged_runs:
        notes.append(
            f"diverged (NaN final return), left out of the means, the IQM and the curves: {', '.join(diverged_runs)}."
        )
    if no_expert:
        notes.append(
            f"no normalized score (no expert.json when they ran) for: {', '.join(sorted(no_expert))}; "
            "their rows show returns only, and the plots of their envs show returns."
        )
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.md").write_text("\n".join(lines).rstrip() + "\n")
    print(
        f"wrote {output_dir / 'results.md'} ({len(runs)} runs, {len(algo_names)} algorithms, {len(env_names)} envs) "
        f"and {len(env_names)} plot(s) in {plots_dir}"
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


if __name__ == "__main__":
    main()
