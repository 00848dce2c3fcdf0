"""Aggregate cleanil runs into benchmark/results.md and benchmark/plots/<env-id>.png (`./benchmark.sh report`), and the
README's headline table (`./benchmark.sh report --readme`).

Reads only what every script writes (DESIGN.md, "Logging and outputs"): runs/<run_name>/summary.json for the final
numbers and eval.csv for the learning curves. A run without summary.json (still running, killed, crashed) is left
out. Runs are grouped by (exp_name, env_id) and by their arguments: runs whose summary.json args differ in anything
but the seed and bookkeeping (tracking, video, checkpoint folder, --resume) never share a row. exp_name is the
algorithm, `<algo>_<tag>` for a tagged sweep, and benchmark.sh appends `@<args-id>` (a hash of the sweep's extra
arguments); a row is labelled by the name without `@<args-id>` where that is unambiguous, else by it and the
arguments that tell the variants apart. If one variant's (env_id, seed) finished more than once, the latest run counts.
A run whose last evaluation is NaN (it diverged) stays out of the means and curves, and the report counts it.

Every row names its seeds, its budget in environment steps (--total-timesteps plus the steps a resumed run took to
refill its replay buffer, summary.json's refill_env_steps; bc learns from gradient steps only: 0 env steps) and the
code commit(s) of its runs: summary.json's "commit" (the HEAD the script ran at), or, for an archived run written
before scripts recorded it, the short hash of the commit that added its folder to git ("archived in <hash>": the code
ran at or before it). A row whose runs come from different commits lists them with their seeds.

Statistics: per run, the final normalized score (last evaluation), the best evaluation and the mean of the last 20%
of its evaluations (the last ceil(n/5) of n rows of eval.csv), so a run that peaked and collapsed shows; per row,
mean +/- sample std over seeds (ddof=1) with n (n=1: no spread). The IQM is the interquartile mean of the per-run
scores pooled over envs x seeds (the 25% trimmed mean of Agarwal et al. 2021, arXiv 2108.13264, as rliable computes
it: scipy.stats.trim_mean(x, 0.25)). Envs without expert.json have NaN normalized scores: they are left out of the
IQM and their plots show returns instead, which results.md says.

The headline table (HEADLINE_ROWS: CFIL on the five MuJoCo envs, BC and GAIL for reference) is a section of
results.md and, built from the archive benchmark/runs, the block of README.md between README_START and README_END;
tests/test_benchmark.py checks that the README's block is what this code makes of the archive.
"""

import argparse
import csv
import json
import math
import subprocess
import sys
import textwrap
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

# The headline table (README.md's results block, and the top of results.md): one row per method, each cell the runs of
# one exp_name (without `@<args-id>`) on one env. A cell entry (exp_name, {arg: value}, note) takes other runs than the
# row's exp_name, or picks one setting where an exp_name has several (the report stops rather than average two), and
# its note says which. An env without such runs shows "-".
HEADLINE_ENVS = ("Hopper-v4", "HalfCheetah-v4", "Walker2d-v4", "Ant-v4", "Humanoid-v4")
HEADLINE_ROWS = (
    {
        "method": "CFIL",
        "exp_name": "cfil",
        "cells": {
            "Humanoid-v4": (
                "cfil_allfeat",
                {"total_timesteps": 320000},
                "Humanoid-v4: `cfil_allfeat`, CFIL with `--flow-features all`, the only archived CFIL run on Humanoid "
                "at the full budget",
            ),
        },
    },
    {"method": "BC (beta-NLL)", "exp_name": "bc_bnll_n1", "cells": {}},
    {"method": "GAIL", "exp_name": "gail", "cells": {}},
)
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def interquartile_mean(values):
    """Mean of the middle 50%: drop floor(n/4) values at each end of the sorted scores (scipy's trim_mean, rliable's
    IQM)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    cut = len(values) // 4
    return float(values[cut : len(values) - cut].mean())


def last_fifth_mean(values):
    """Mean of the last 20% of a run's evaluations: its last ceil(n/5) of n (at least one)."""
    values = np.asarray(values, dtype=np.float64)
    count = -(-len(values) // 5)  # ceil(n / 5) in integers (0.2 * 15 is 3.0000000000000004 in floats)
    return float(values[len(values) - count :].mean())


def run_scores(run):
    """A run's normalized scores: final (summary.json's, None without expert.json), best and last-20% mean of
    eval.csv."""
    scores = run["curve"]["normalized_score"]
    final = run["summary"].get("final_normalized_score")
    if not is_finite(final) or not np.isfinite(scores).any():
        return {"final": None, "best": None, "last": None}
    return {"final": float(final), "best": float(np.nanmax(scores)), "last": last_fifth_mean(scores)}


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
    runs = list(latest.values())
    archived = archive_commits(runs_dir)
    for run in runs:
        commit = run["summary"].get("commit")
        if isinstance(commit, str) and commit:
            run["code"] = commit[:7]
        elif run["dir"].resolve() in archived:
            run["code"] = f"archived in {archived[run['dir'].resolve()]}"
        else:
            run["code"] = "commit unknown"
    return runs, {"unfinished": unfinished, "replaced": replaced, "unreadable": unreadable}


def archive_commits(runs_dir):
    """{run folder (resolved): short hash of the oldest commit that added a file of it} for the run folders under
    runs_dir that git tracks (`git log --diff-filter=A --format=%h -- <folder>`, one git call for all of them); {}
    outside a git work tree or without git."""
    runs_dir = Path(runs_dir).resolve()

    def git(*args):
        return subprocess.run(["git", "-C", str(runs_dir), *args], capture_output=True, text=True, timeout=120)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return {}
        top = Path(top.stdout.strip()).resolve()
        log = git("log", "--diff-filter=A", "--no-renames", "--name-only", "--format=commit %h", "--", str(runs_dir))
    except (OSError, subprocess.SubprocessError):
        return {}
    added, commit = {}, None
    for line in log.stdout.splitlines():  # newest commit first: the oldest one that added a folder's file wins
        if line.startswith("commit "):
            commit = line.split()[1]
        elif line.strip() and commit:
            added[(top / line.strip()).parent] = commit
    return added


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


def mean_std(values, digits, with_n=False):
    """`mean ± sample std (n=N)` (ddof=1); one value has no spread: `mean (n=1)`."""
    values = np.asarray(values, dtype=np.float64)
    text = f"{values.mean():.{digits}f}"
    if len(values) > 1:
        text += f" ± {values.std(ddof=1):.{digits}f}"
    return text + (f" (n={len(values)})" if with_n else "")


def seeds_text(seeds):
    seeds = sorted(seeds)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def env_steps(run):
    """(environment steps a run took to learn, its refill steps among them, its gradient steps if it takes none)."""
    args, refill = run["summary"]["args"], int(run["summary"].get("refill_env_steps") or 0)
    total = int(args.get("total_timesteps") or 0)
    if script_of(run["exp_name"]) in GRADIENT_STEP_SCRIPTS:
        return refill, refill, total
    return total + refill, refill, None


def budget_text(runs):
    """The env steps of a row's runs, refill steps included: `320000`, `370000 (50000 refill)`, `0 (10000 gradient
    steps)`, or per seed where they differ: `seed 1: 370000 (50000 refill); seeds 2, 3: 320000`."""
    by_budget = defaultdict(list)
    for run in runs:
        by_budget[env_steps(run)].append(run["seed"])

    def one(budget):
        steps, refill, gradient = budget
        extra = [f"{refill} refill"] if refill else []
        extra += [f"{gradient} gradient steps"] if gradient is not None else []
        return f"{steps}" + (f" ({', '.join(extra)})" if extra else "")

    if len(by_budget) == 1:
        return one(next(iter(by_budget)))
    return "; ".join(
        f"{seeds_text(seeds)}: {one(budget)}" for budget, seeds in sorted(by_budget.items(), key=lambda x: min(x[1]))
    )


def code_text(runs):
    """The commit(s) of a row's runs: one label, or `different commits: <label> (seeds ...); ...`."""
    by_code = defaultdict(list)
    for run in runs:
        by_code[run["code"]].append(run["seed"])
    if len(by_code) == 1:
        return next(iter(by_code))
    parts = sorted(by_code.items(), key=lambda item: min(item[1]))
    return "different commits: " + "; ".join(f"{code} ({seeds_text(seeds)})" for code, seeds in parts)


def format_duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def is_finite(value):
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def curve_band(curves, key):
    """Mean and sample std over runs on a common step grid (the union of their eval steps, up to the shortest run); a run's NaN
    evaluations (it diverged) drop out of the mean where they occur."""
    last_step = min(curve["global_step"][-1] for curve in curves)
    grid = np.unique(np.concatenate([curve["global_step"] for curve in curves]))
    grid = grid[grid <= last_step]
    values = np.stack([np.interp(grid, curve["global_step"], curve[key]) for curve in curves])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every run is NaN stays NaN: no line there
        return grid, np.nanmean(values, 0), np.nanstd(values, 0, ddof=1)  # one run: NaN, no band


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
            ax.set_ylabel("normalized score (mean ± sample std over seeds)")
            ax.set_title(env_id)
        else:
            ax.set_ylabel("evaluation return (mean ± sample std over seeds)")
            ax.set_title(f"{env_id}: returns (normalized score n/a for {', '.join(missing)}: no expert.json)", fontsize=9)
        ax.set_xlabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return missing, panels


def headline_cells(runs):
    """{(method, env_id): the runs of that cell, by seed} for HEADLINE_ROWS, and the cells that match runs of more than
    one setting (problems: the report does not average two settings)."""
    cells, problems = {}, []
    for row in HEADLINE_ROWS:
        for env_id in HEADLINE_ENVS:
            exp_name, wanted, _ = row["cells"].get(env_id, (row["exp_name"], {}, None))
            matching = [
                run
                for run in runs
                if run["env_id"] == env_id
                and base_name(run["exp_name"]) == exp_name
                and all(run["summary"]["args"].get(key) == value for key, value in wanted.items())
            ]
            settings = {(run["exp_name"], run["setting"]) for run in matching}
            if len(settings) > 1:
                problems.append(
                    f"headline cell {row['method']} on {env_id}: runs of {len(settings)} settings of {exp_name} match; "
                    "name the arguments that pick one in HEADLINE_ROWS"
                )
            elif matching:
                cells[row["method"], env_id] = sorted(matching, key=lambda run: run["seed"])
    return cells, problems


def demos_text(runs):
    """The demonstrations a row learned from, from its runs' arguments: `1 trajectory`, `10 trajectories`, ..."""
    texts = set()
    for run in runs:
        args = run["summary"]["args"]
        count, every = args.get("num_expert_trajectories"), args.get("subsample_frequency") or 1
        if count is None:
            texts.add("?")
            continue
        text = f"{count} trajector{'y' if count == 1 else 'ies'}"
        texts.add(text + (f", every {every}th transition" if every > 1 else ""))
    return " / ".join(sorted(texts))


def per_env_text(texts):
    """{env_id: text} as one statement when every env has the same, else `env text; env text` ([...] around a text
    that has its own `;`)."""
    if len(set(texts.values())) == 1:
        return f"{next(iter(texts.values()))} on every env"
    return "; ".join(f"{env_id} [{text}]" if ";" in text else f"{env_id} {text}" for env_id, text in texts.items())


def headline_lines(runs):
    """The headline table (HEADLINE_ROWS x HEADLINE_ENVS, final / best / last-20% scores, IQM over env x seed), its
    notes and one line per method with the seeds, env steps and commits of its cells; and the problems."""
    cells, problems = headline_cells(runs)
    marks, notes = {}, []
    for row in HEADLINE_ROWS:
        for env_id in HEADLINE_ENVS:
            if env_id in row["cells"] and (row["method"], env_id) in cells:
                marks[row["method"], env_id] = "¹²³⁴⁵⁶⁷⁸⁹"[len(notes)]
                notes.append(f"{marks[row['method'], env_id]} {row['cells'][env_id][2]}.")
    lines = [
        f"| method | demos | score | {' | '.join(HEADLINE_ENVS)} | IQM (env × seed) |",
        "|---" * (len(HEADLINE_ENVS) + 4) + "|",
    ]
    details = []
    for row in HEADLINE_ROWS:
        row_cells = {env_id: cells[row["method"], env_id] for env_id in HEADLINE_ENVS if (row["method"], env_id) in cells}
        if not row_cells:
            continue
        scored = {env_id: [run_scores(run) for run in group if not diverged(run)] for env_id, group in row_cells.items()}
        for index, (key, name) in enumerate((("final", "final"), ("best", "best"), ("last", "last 20%"))):
            texts = []
            for env_id in HEADLINE_ENVS:
                values = [scores[key] for scores in scored.get(env_id, ()) if scores[key] is not None]
                if env_id not in row_cells:
                    texts.append("-")
                    continue
                text = mean_std(values, 3, with_n=True) if values else "n/a"
                lost = len(row_cells[env_id]) - len(scored[env_id])
                text += f" ({lost} diverged)" if lost else ""
                texts.append(text + (f" {marks[row['method'], env_id]}" if (row["method"], env_id) in marks else ""))
            pooled = [scores[key] for group in scored.values() for scores in group if scores[key] is not None]
            iqm = f"{interquartile_mean(pooled):.3f} (n={len(pooled)})" if pooled else "n/a"
            label = (
                (row["method"], demos_text([run for group in row_cells.values() for run in group])) if not index else ("", "")
            )
            lines.append(f"| {label[0]} | {label[1]} | {name} | {' | '.join(texts)} | {iqm} |")
        seeds = per_env_text({env_id: ", ".join(str(run["seed"]) for run in group) for env_id, group in row_cells.items()})
        budgets = per_env_text({env_id: budget_text(group) for env_id, group in row_cells.items()})
        codes = per_env_text({env_id: code_text(group) for env_id, group in row_cells.items()})
        details.append(f"- {row['method']}: seeds {seeds}. Env steps: {budgets}. Code: {codes}.")
    if len(lines) == 2:
        return [], problems
    intro = (
        "Normalized score of each run (1 = the expert's mean return in `experts/<env-id>/expert.json`, 0 = a random "
        "policy's): *final* = its last evaluation, *best* = its best evaluation, *last 20%* = the mean of its last "
        "20% of evaluations, so a run that peaked and fell shows; each cell is the mean ± sample std (ddof=1) over "
        "its n seeds. IQM = the interquartile mean of a method's runs pooled over env × seed (25% trimmed at each "
        "end, as rliable computes it). Env steps include the steps a resumed run took to refill its replay buffer; "
        '"archived in <hash>" is the commit that added a run to `benchmark/runs` (the code ran at or before it).'
    )
    notes = [line for note in notes for line in (wrap(note), "")]
    return [wrap(intro), "", *lines, "", *notes, *(wrap(detail, "  ") for detail in details)], problems


def wrap(text, indent=""):
    """Prose at the README's 120 columns (a markdown paragraph or list item may span lines)."""
    return textwrap.fill(text, width=120, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def readme_block(runs_dir):
    """The text between README_START and README_END: the headline table of the runs in runs_dir (the archive), no
    timestamp, so the README changes only when the archive does."""
    runs, _ = load_runs(runs_dir)
    lines, problems = headline_lines(runs)
    if problems or not lines:
        sys.exit(f"error: no headline table from {runs_dir}: {'; '.join(problems) or 'none of HEADLINE_ROWS runs there'}.")
    return "\n".join(
        [
            "<!-- generated from benchmark/runs by `./benchmark.sh report --readme` (benchmark/report.py): edits here "
            "are lost -->",
            "",
            *lines,
            "",
            wrap(
                "Every row of the archive, with its arguments, seeds, env steps, commits, steps/s and learning curves: "
                "[benchmark/results.md](benchmark/results.md)."
            ),
        ]
    )


def write_readme(path, block):
    """Replace what lies between README_START and README_END in path (each on a line of its own) by block."""
    text = Path(path).read_text()
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == README_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == README_END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        sys.exit(f"error: {path} needs one line `{README_START}` and, after it, one line `{README_END}`.")
    new = "\n".join(lines[: starts[0] + 1] + block.rstrip("\n").split("\n") + lines[ends[0] :])
    if new != text:
        Path(path).write_text(new)
    return new != text


def readme_text_between_markers(text):
    """The block of a README's text (without the marker lines), or None when it has no such block."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == README_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == README_END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        return None
    return "\n".join(lines[starts[0] + 1 : ends[0]])


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
    parser.add_argument(
        "--readme",
        nargs="?",
        const=str(REPO / "README.md"),
        default=None,
        metavar="README",
        help="instead of results.md: rewrite the block between the README's `<!-- results:start -->` and "
        "`<!-- results:end -->` lines with the headline table of the archive, benchmark/runs (whatever --runs-dir "
        "says: the README reports archived runs only); README defaults to the repo's README.md",
    )
    args = parser.parse_args()

    if args.readme is not None:
        if args.algos or args.env_ids:
            sys.exit("error: --readme takes the headline from every archived run; drop --algos and --env-ids.")
        changed = write_readme(args.readme, readme_block(REPO / "benchmark" / "runs"))
        print(f"{'rewrote' if changed else 'unchanged:'} the results block of {args.readme} (from benchmark/runs)")
        return

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
        "expert.json (1 = expert, 0 = random policy). Per run: final = its last evaluation, best = its best "
        "evaluation, last 20% = the mean of its last 20% of evaluations (the last ceil(n/5) of n rows of eval.csv). "
        "Spread: mean ± sample std over seeds (ddof=1), n = the number of seeds averaged (n=1: no spread). Env steps = "
        "--total-timesteps plus the steps a resumed run took to refill its replay buffer (summary.json's "
        "refill_env_steps; bc learns from gradient steps only: 0 env steps). Code: the commit a run recorded in "
        'summary.json, or for an archived run that predates it "archived in <hash>", the commit that added its '
        "folder to git (the code ran at or before it). Steps/s and wall time are the per-run means from "
        "summary.json. Runs with different arguments are different rows.",
        "",
    ]
    headline, problems = headline_lines(runs)
    if headline and not problems:
        lines += ["## Headline", "", *headline, ""]

    lines += [
        "## Final scores per algorithm and environment",
        "",
        "| algorithm | environment | seeds | env steps | final normalized score | best | last 20% | final return | "
        "steps/s | wall time | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    no_expert, diverged_runs = set(), []
    for (algo, env_id), group in groups.items():
        finished = [run for run in group if not diverged(run)]
        diverged_runs += [f"{algo} on {env_id} seed {run['seed']}" for run in group if diverged(run)]
        scores = [run_scores(run) for run in finished]
        finite = [score for score in scores if score["final"] is not None]
        best_text = last_text = "n/a"
        if not all(has_expert(run) for run in group):
            no_expert.add(f"{algo} on {env_id}")
            score_text = "n/a (no expert.json)"
        elif not finite:
            score_text = "n/a (every seed diverged)"
        else:
            score_text = mean_std([score["final"] for score in finite], 3, with_n=True) + (
                "" if len(finite) == len(group) else f" ({len(finite)}/{len(group)} seeds; the rest diverged)"
            )
            best_text = mean_std([score["best"] for score in finite], 3)
            last_text = mean_std([score["last"] for score in finite], 3)
        return_text = mean_std([run["summary"]["final_return"] for run in finished], 1) if finished else "NaN (diverged)"
        lines.append(
            f"| {algo} | {env_id} | {', '.join(str(run['seed']) for run in group)} | {budget_text(group)} | "
            f"{score_text} | {best_text} | {last_text} | {return_text} | "
            f"{np.mean([run['summary']['mean_sps'] for run in group]):.0f} | "
            f"{format_duration(np.mean([run['summary']['total_wall_time_s'] for run in group]))} | {code_text(group)} |"
        )

    lines += [
        "",
        "## Aggregate over environments (IQM)",
        "",
        "Interquartile mean of an algorithm's per-run normalized scores (final, best, last 20%), pooled over its "
        "environments and seeds (25% trimmed from each end; Agarwal et al. 2021, as rliable computes it). "
        "Environments without expert.json and diverged runs are left out (listed in the notes).",
        "",
        "| algorithm | IQM final | IQM best | IQM last 20% | runs | environments |",
        "|---|---|---|---|---|---|",
    ]
    for algo in algo_names:
        pooled = [
            (run_scores(run), env_id)
            for (name, env_id), group in groups.items()
            if name == algo
            for run in group
            if not diverged(run)
        ]
        pooled = [(scores, env_id) for scores, env_id in pooled if scores["final"] is not None]
        if pooled:
            envs = sorted({env_id for _, env_id in pooled})
            iqms = " | ".join(
                f"{interquartile_mean([scores[key] for scores, _ in pooled]):.3f}" for key in ("final", "best", "last")
            )
            lines.append(f"| {algo} | {iqms} | {len(pooled)} | {', '.join(envs)} |")
        else:
            lines.append(f"| {algo} | n/a (no expert.json) | n/a | n/a | 0 | |")

    plots_dir = output_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    lines += [
        "",
        "## Learning curves",
        "",
        "Evaluation after every `eval_frequency` steps; line = mean over seeds, band = ± 1 sample std (none for one "
        "seed). bc counts gradient steps (its own panel); budgets more than 10x apart get separate panels.",
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
    notes += [f"{problem}: the headline table is left out." for problem in problems]
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
