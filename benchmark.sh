#!/usr/bin/env bash
# Multi-seed sweeps of the cleanil scripts, on local workers or as a Slurm job array, and their aggregation.
#
#   ./benchmark.sh --algos "bc gail" --env-ids "Hopper-v4 Ant-v4" --seeds 5 [options] [-- extra script args]
#   ./benchmark.sh report [--workdir DIR] [--runs-dir DIR] [--output-dir DIR] [--algos ...] [--env-ids ...]
#
# A run is identified by (exp_name, env_id, seed), and exp_name carries the sweep's arguments: benchmark.sh passes
# `--exp-name <algo>[_<tag>]@<args-id> --env-id --seed`, <args-id> being the first 8 hex digits of the SHA-256 of the
# extra arguments (each followed by a NUL byte), and the scripts write runs/<env_id>__<exp_name>__<seed>__<unix time>/
# (docs/DESIGN.md). So runs with other arguments (another sweep, a direct run) are never taken for this sweep's. A
# combination with a summary.json there is finished and skipped, so re-running the same command resumes an
# interrupted sweep; an unfinished one whose script has --resume and left
# checkpoints/<env_id>__<exp_name>__<seed>.pt continues from that checkpoint (--resume) in its own run
# folder instead of starting again.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    cat <<'EOF'
usage: ./benchmark.sh --algos "ALGO ..." --env-ids "ENV ..." [--seeds N] [options] [-- extra args for every script]
       ./benchmark.sh report [--workdir DIR] [--runs-dir DIR] [--output-dir DIR] [--algos "..."] [--env-ids "..."]
           (writes WORKDIR/runs/report/results.md and plots; --output-dir benchmark replaces the committed report)

Runs every (algorithm, env id, seed 1..N) combination; ALGO is a script name in cleanil/ (sac, dqn, bc, gail, ...).
The runs are named <algo>[_<tag>]@<args-id> (exp_name), args-id = 8 hex digits of the SHA-256 of the extra args:
a combination with a finished run of the same arguments (WORKDIR/runs/<env-id>__<exp-name>__<seed>__*/summary.json)
is skipped; an unfinished one continues from WORKDIR/checkpoints/<env-id>__<exp-name>__<seed>.pt with
--resume when its script has --resume (sac, cfil, nail, sqil, iq_learn) and left one, so re-running a killed sweep loses
little work. Other arguments are another exp_name: they never skip, resume or mix with these runs.

sweep options:
  --algos "A B"          scripts to run (required)
  --env-ids "E F"        Gymnasium env ids (required)
  --seeds N              seeds 1..N (default 3)
  --workers N            parallel local runs (default: number of cores); with --slurm: array throttle (%N)
  --threads N            OMP/MKL threads per run (default: $OMP_NUM_THREADS if set, else max(1, cores / workers);
                         Slurm: --cpus-per-task)
  --workdir DIR          folder the scripts run in: outputs go to DIR/runs, DIR/checkpoints, DIR/videos
                         (default: the repository root)
  --log-dir DIR          one log per run, <exp>__<env>__<seed>.log (default: WORKDIR/benchmark/logs)
  --tag TAG              name the runs <algo>_<TAG>@<args-id>, a readable name for a variant in the report
  --python PATH          interpreter (default: $PYTHON, else the active virtualenv's, else python3; with --slurm:
                         $PYTHON, else the python3 that each task's environment provides after --setup)
  --dry-run              print the commands (with --slurm: the rendered sbatch script) and run nothing
  --slurm                submit a Slurm job array, one task per unfinished combination, instead of running locally
  --partition P          #SBATCH --partition
  --time T               #SBATCH --time (e.g. 12:00:00)
  --cpus-per-task N      #SBATCH --cpus-per-task (default 1); also the run's OMP_NUM_THREADS
  --mem M                #SBATCH --mem (e.g. 8G)
  --sbatch-args "..."    more directives, each as --option=value (e.g. "--gres=gpu:1 --account=lab")
  --setup "CMD"          shell line run before each task (e.g. "module load cuda; source venv/bin/activate"); the
                         task then runs the python3 it finds (its slurm-*.out says which), unless --python is given
  -h, --help             this help
Everything after `--` is passed to every script (e.g. -- --total-timesteps 100000 --capture-video).
sbatch also reads SBATCH_PARTITION, SBATCH_TIMELIMIT, SBATCH_ACCOUNT, ... from the environment (overriding the
script's directives). Exit status: 0 all runs finished, 1 some run failed (listed at the end), 2 bad usage.
EOF
}

die() {
    echo "error: $*" >&2
    exit 2
}

cores() {
    local n
    # GNU nproc reports OMP_NUM_THREADS when it is set (e.g. to 1 by a user or a test): count cores without it
    n=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
    echo "${n:-1}"
}

positive_int() { # name value
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'; see ./benchmark.sh --help."
}

default_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
        echo "$VIRTUAL_ENV/bin/python"
    else
        command -v python3 || command -v python || echo python3
    fi
}

# ---------------------------------------------------------------------------------------------------------- report
if [[ "${1:-}" == "report" ]]; then
    shift
    workdir="$REPO"
    report_args=()
    while (($#)); do
        case "$1" in
            --workdir) (($# >= 2)) || die "--workdir needs a folder."; workdir="$2"; shift 2 ;;
            --workdir=*) workdir="${1#*=}"; shift ;;
            *) report_args+=("$1"); shift ;;
        esac
    done
    # defaults first: a --runs-dir or --output-dir given by the user comes later and wins (argparse keeps the last).
    # The default output is inside runs/ (git-ignored): the committed benchmark/results.md changes only when asked.
    exec "$(default_python)" "$REPO/benchmark/report.py" --runs-dir "$workdir/runs" \
        --output-dir "$workdir/runs/report" ${report_args[@]+"${report_args[@]}"}
fi

# ----------------------------------------------------------------------------------------------------------- sweep
ALGOS="" ENV_IDS="" SEEDS=3 WORKERS="" THREADS="" WORKDIR="$REPO" LOG_DIR="" TAG="" PYTHON_BIN=""
DRY_RUN=0 SLURM=0 PARTITION="" TIME_LIMIT="" CPUS_PER_TASK=1 MEM="" SBATCH_ARGS="" SETUP=""
EXTRA=()
while (($#)); do
    arg="$1"
    if [[ "$arg" == --*=* ]]; then # --name=value -> --name value
        set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
        arg="$1"
    fi
    case "$arg" in
        --dry-run) DRY_RUN=1; shift; continue ;;
        --slurm) SLURM=1; shift; continue ;;
        -h | --help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        --algos | --env-ids | --seeds | --workers | --threads | --workdir | --log-dir | --tag | --python | --partition | \
            --time | --cpus-per-task | --mem | --sbatch-args | --setup)
            (($# >= 2)) || die "$arg needs a value; see ./benchmark.sh --help." ;;
        *) die "unknown option '$arg'; options for the scripts go after '--' (see ./benchmark.sh --help)." ;;
    esac
    value="$2"
    shift 2
    case "$arg" in
        --algos) ALGOS="$value" ;;
        --env-ids) ENV_IDS="$value" ;;
        --seeds) SEEDS="$value" ;;
        --workers) WORKERS="$value" ;;
        --threads) THREADS="$value" ;;
        --workdir) WORKDIR="$value" ;;
        --log-dir) LOG_DIR="$value" ;;
        --tag) TAG="$value" ;;
        --python) PYTHON_BIN="$value" ;;
        --partition) PARTITION="$value" ;;
        --time) TIME_LIMIT="$value" ;;
        --cpus-per-task) CPUS_PER_TASK="$value" ;;
        --mem) MEM="$value" ;;
        --sbatch-args) SBATCH_ARGS="$value" ;;
        --setup) SETUP="$value" ;;
    esac
done

read -r -a ALGO_LIST <<<"$ALGOS"
read -r -a ENV_LIST <<<"$ENV_IDS"
((${#ALGO_LIST[@]})) || die "no algorithms; pass e.g. --algos \"bc gail\" (script names in cleanil/)."
((${#ENV_LIST[@]})) || die "no environments; pass e.g. --env-ids \"Hopper-v4 Ant-v4\"."
positive_int --seeds "$SEEDS"
positive_int --cpus-per-task "$CPUS_PER_TASK"
[[ -z "$WORKERS" ]] || positive_int --workers "$WORKERS"
[[ -z "$THREADS" ]] || positive_int --threads "$THREADS"
[[ "$TAG" =~ ^[A-Za-z0-9_.-]*$ ]] || die "--tag may hold only letters, digits, '_', '.' and '-', got '$TAG'."
for algo in "${ALGO_LIST[@]}"; do
    if [[ ! -f "$REPO/cleanil/$algo.py" ]]; then
        available=$(cd "$REPO/cleanil" && ls -- *.py | sed 's/\.py$//' | tr '\n' ' ')
        die "no script cleanil/$algo.py; --algos takes script names, one of: ${available% }."
    fi
done
for extra in ${EXTRA[@]+"${EXTRA[@]}"}; do
    case "$extra" in
        --exp-name | --exp-name=* | --seed | --seed=* | --env-id | --env-id=*)
            die "benchmark.sh sets ${extra%%=*} itself; drop it from the extra args (use --tag to name a variant, --seeds and --env-ids for the rest)." ;;
        --resume | --checkpoint-dir | --checkpoint-dir=*)
            die "benchmark.sh passes --resume itself where WORKDIR/checkpoints/<env-id>__<exp-name>__<seed>.pt exists; drop ${extra%%=*} from the extra args (use --workdir to move the checkpoints)." ;;
    esac
done
absolute() { if [[ "$1" == /* ]]; then echo "${1%/}"; else echo "$PWD/${1%/}"; fi; }
WORKDIR="$(absolute "$WORKDIR")"
LOG_DIR="$(absolute "${LOG_DIR:-$WORKDIR/benchmark/logs}")"
if ((!DRY_RUN)); then
    mkdir -p "$WORKDIR" || die "cannot create --workdir $WORKDIR."
    mkdir -p "$LOG_DIR" || die "cannot create --log-dir $LOG_DIR."
fi
# an interpreter chosen by the user (--python, $PYTHON) is used as given, also by Slurm tasks; otherwise a Slurm task
# runs the python3 its own environment provides after --setup, never a path found on this (login) machine
PYTHON_CHOSEN="${PYTHON_BIN:-${PYTHON:-}}"
PYTHON_BIN="${PYTHON_BIN:-$(default_python)}"

CORES=$(cores)
WORKERS_GIVEN="$WORKERS"
WORKERS="${WORKERS:-$CORES}"
# a user's exported OMP_NUM_THREADS is their choice of threads per run (e.g. 1 for long runs sharing a machine)
[[ -z "$THREADS" && "${OMP_NUM_THREADS:-}" =~ ^[1-9][0-9]*$ ]] && THREADS=$OMP_NUM_THREADS
THREADS="${THREADS:-$((CORES / WORKERS > 1 ? CORES / WORKERS : 1))}"

CAPTURE_VIDEO=0
for extra in ${EXTRA[@]+"${EXTRA[@]}"}; do
    [[ "$extra" == --capture-video* ]] && CAPTURE_VIDEO=1
done
if ((CAPTURE_VIDEO)); then
    # MuJoCo renders offscreen only with a headless GL: EGL (libegl1 + a vendor EGL such as libegl-mesa0 or the
    # NVIDIA driver) or OSMesa (libosmesa6); gymnasium's default, glfw, needs a display
    export MUJOCO_GL="${MUJOCO_GL:-egl}"
    # (not for Slurm: the tasks' Python is not this machine's)
    if ((!DRY_RUN && !SLURM)) && ! "$PYTHON_BIN" -c "import moviepy" 2>/dev/null; then
        die "--capture-video needs moviepy, which $PYTHON_BIN cannot import; pip install moviepy (gymnasium[other]) or drop --capture-video."
    fi
fi

# Every combination, in order; PENDING holds the indices of those without a finished run.
COMBO_ALGO=() COMBO_ENV=() COMBO_SEED=() PENDING=() SKIPPED=()
for algo in "${ALGO_LIST[@]}"; do
    for env_id in "${ENV_LIST[@]}"; do
        for ((seed = 1; seed <= SEEDS; seed++)); do
            COMBO_ALGO+=("$algo") COMBO_ENV+=("$env_id") COMBO_SEED+=("$seed")
        done
    done
done

# the sweep's identity: runs with other extra arguments get another exp_name, so they are never skipped, resumed or
# reported as this sweep's
ARGS_ID=$( (((${#EXTRA[@]})) && printf '%s\0' "${EXTRA[@]}") | sha256sum | cut -c 1-8)
exp_name() { echo "${COMBO_ALGO[$1]}${TAG:+_$TAG}@$ARGS_ID"; }
run_prefix() { echo "${COMBO_ENV[$1]}__$(exp_name "$1")__${COMBO_SEED[$1]}"; } # runs/<prefix>__<unix time>/
log_file() { local env_id="${COMBO_ENV[$1]}"; echo "$LOG_DIR/$(exp_name "$1")__${env_id//\//_}__${COMBO_SEED[$1]}.log"; }
label() { echo "${COMBO_ALGO[$1]}${TAG:+_$TAG} ${COMBO_ENV[$1]} seed ${COMBO_SEED[$1]}"; } # for people: no args-id
finished_run() { # the first finished run dir of combination $1, if any
    local matches
    matches=$(compgen -G "$WORKDIR/runs/$(run_prefix "$1")__*/summary.json" | head -n 1)
    [[ -n "$matches" ]] && dirname "$matches"
}
supports_resume() { grep -qE '^[[:space:]]+resume:' "$REPO/cleanil/${COMBO_ALGO[$1]}.py"; } # an Args field `resume`
checkpoint_file() { echo "$WORKDIR/checkpoints/$(run_prefix "$1").pt"; } # the scripts' default --checkpoint-dir
resumable() { supports_resume "$1" && [[ -f "$(checkpoint_file "$1")" ]]; } # an interrupted run that can continue
build_command() { # sets CMD to the command line of combination $1, with --resume when resumable (not given "noresume")
    CMD=("$PYTHON_BIN" "$REPO/cleanil/${COMBO_ALGO[$1]}.py" --env-id "${COMBO_ENV[$1]}" --seed "${COMBO_SEED[$1]}"
        --exp-name "$(exp_name "$1")" ${EXTRA[@]+"${EXTRA[@]}"})
    if [[ "${2:-}" != noresume ]] && resumable "$1"; then
        CMD+=(--resume)
    fi
}
quoted() { printf '%q ' "$@" | sed 's/ $//'; }

for ((i = 0; i < ${#COMBO_ALGO[@]}; i++)); do
    if done_dir=$(finished_run "$i"); then
        SKIPPED+=("$i")
        echo "skip $(label "$i"): finished in ${done_dir#"$WORKDIR"/}" >&2
    else
        PENDING+=("$i")
    fi
done
TOTAL=${#COMBO_ALGO[@]}
echo "${#COMBO_ALGO[@]} combinations: ${#PENDING[@]} to run, ${#SKIPPED[@]} already finished (workdir $WORKDIR)" >&2

# The sweep's machine and versions, once per sweep (the scripts' summary.json keep only device, precision, commit):
# WORKDIR/runs/sweeps/<time>.json, read by benchmark/report.py. For --slurm it is the submitting machine's view.
record_sweep() {
    local file
    file="$WORKDIR/runs/sweeps/$(date -u +%Y%m%dT%H%M%SZ)__$ARGS_ID.json"
    mkdir -p "$(dirname "$file")" || die "cannot create $(dirname "$file")."
    SWEEP_ALGOS="$ALGOS" SWEEP_ENVS="$ENV_IDS" SWEEP_SEEDS="$SEEDS" SWEEP_THREADS="$THREADS" SWEEP_WORKERS="$WORKERS" \
        SWEEP_SLURM="$SLURM" SWEEP_EXTRA="$(quoted ${EXTRA[@]+"${EXTRA[@]}"})" SWEEP_ARGS_ID="$ARGS_ID" REPO="$REPO" \
        "$PYTHON_BIN" "$REPO/benchmark/sweep_record.py" >"$file" || die "could not record the sweep's versions with $PYTHON_BIN."
    echo "sweep recorded in ${file#"$WORKDIR"/}" >&2
}

# ----------------------------------------------------------------------------------------------------------- slurm
render_sbatch() {
    local template="$REPO/benchmark/slurm_template.sh" line n=${#PENDING[@]} directive task=0 i
    [[ -f "$template" ]] || die "missing $template."
    while IFS= read -r line || [[ -n "$line" ]]; do
        case "$line" in
            "@SBATCH@")
                echo "#SBATCH --job-name=cleanil-benchmark"
                echo "#SBATCH --array=0-$((n - 1))${WORKERS_GIVEN:+%$WORKERS_GIVEN}"
                echo "#SBATCH --cpus-per-task=$CPUS_PER_TASK"
                echo "#SBATCH --output=$LOG_DIR/slurm-%A_%a.out"
                [[ -n "$PARTITION" ]] && echo "#SBATCH --partition=$PARTITION"
                [[ -n "$TIME_LIMIT" ]] && echo "#SBATCH --time=$TIME_LIMIT"
                [[ -n "$MEM" ]] && echo "#SBATCH --mem=$MEM"
                for directive in $SBATCH_ARGS; do
                    [[ "$directive" == -* ]] || die "--sbatch-args takes --option=value words, got '$directive'."
                    echo "#SBATCH $directive"
                done
                ;;
            "@ENVIRONMENT@")
                echo "export OMP_NUM_THREADS=\${SLURM_CPUS_PER_TASK:-$CPUS_PER_TASK} MKL_NUM_THREADS=\${SLURM_CPUS_PER_TASK:-$CPUS_PER_TASK}"
                ((CAPTURE_VIDEO)) && echo "export MUJOCO_GL=$(quoted "$MUJOCO_GL")"
                [[ -n "$SETUP" ]] && echo "$SETUP"
                if [[ -n "$PYTHON_CHOSEN" ]]; then
                    echo "python=$(quoted "$PYTHON_CHOSEN") # --python (or \$PYTHON) at submission"
                else
                    echo "python=\$(command -v python3 || command -v python) # the job's own, after the setup line (--python to choose)"
                fi
                echo "cd $(quoted "$WORKDIR") || exit 1"
                ;;
            "@TASKS@")
                for i in "${PENDING[@]}"; do
                    build_command "$i" noresume
                    echo "    $task) name=$(quoted "$(label "$i")") prefix=$(quoted "$(run_prefix "$i")") log=$(quoted "$(log_file "$i")")"
                    echo "       command=(\"\$python\" $(quoted "${CMD[@]:1}"))"
                    # decided when the task runs: a requeued or resubmitted task continues from its last attempt's checkpoint
                    supports_resume "$i" && echo "       [[ -f $(quoted "$(checkpoint_file "$i")") ]] && command+=(--resume)"
                    echo "       ;;"
                    task=$((task + 1))
                done
                echo "    *) echo \"error: this array has tasks 0-$((n - 1)), not \$SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;"
                ;;
            *) echo "$line" ;;
        esac
    done <"$template"
}

if ((SLURM)); then
    if ((${#PENDING[@]} == 0)); then
        echo "nothing to submit: all $TOTAL combinations have finished runs." >&2
        exit 0
    fi
    script=$(render_sbatch) || exit 2
    if ((DRY_RUN)); then
        echo "$script"
        exit 0
    fi
    command -v sbatch >/dev/null || die "sbatch not found; submit from a Slurm login node, or look at the script with --dry-run --slurm."
    record_sweep
    script_file="$LOG_DIR/sbatch-$(date +%Y%m%d-%H%M%S).sh"
    echo "$script" >"$script_file"
    if [[ -n "$PYTHON_CHOSEN" ]]; then
        python_note="python $PYTHON_CHOSEN"
    elif [[ -n "$SETUP" ]]; then
        python_note="each task's python3 after --setup"
    else
        python_note="each task's python3 on the PATH it inherits from this shell (no --setup)"
    fi
    echo "submitting $script_file (${#PENDING[@]} array tasks, $python_note; logs in $LOG_DIR)" >&2
    exec sbatch "$script_file"
fi

# ----------------------------------------------------------------------------------------------------------- local
if ((DRY_RUN)); then
    for i in "${PENDING[@]+"${PENDING[@]}"}"; do
        build_command "$i"
        redirect=">" && resumable "$i" && redirect=">>"
        echo "cd $(quoted "$WORKDIR") && OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS$( ((CAPTURE_VIDEO)) && echo " MUJOCO_GL=$MUJOCO_GL") $(quoted "${CMD[@]}") $redirect $(quoted "$(log_file "$i")") 2>&1"
    done
    exit 0
fi
if ((${#PENDING[@]} == 0)); then
    echo "nothing to run: all $TOTAL combinations have finished runs." >&2
    exit 0
fi
record_sweep
echo "running ${#PENDING[@]} runs on $WORKERS workers, OMP_NUM_THREADS=$THREADS each; logs in $LOG_DIR" >&2

declare -A RUNNING=() STARTED=() # pid -> combination index, pid -> start time
FAILED=() SUCCEEDED=0 count=0

error_line() { # the most telling line of a failed run's log: its last error message, else its last line
    local line
    line=$(tr '\r' '\n' <"$1" | grep -a -i -E "error|unrecognized|exception|killed" | tail -n 1)
    [[ -n "$line" ]] || line=$(tr '\r' '\n' <"$1" | grep -a -v '^[[:space:]]*$' | tail -n 1)
    echo "$line" | tr -s ' ' | sed 's/^[│ ]*//; s/[│ ]*$//' | cut -c 1-300
}

reap_one() { # wait until some run ends, and record how it ended
    local pid status i
    while :; do
        for pid in "${!RUNNING[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                wait "$pid"
                status=$?
                i=${RUNNING[$pid]}
                if ((status == 0)); then
                    SUCCEEDED=$((SUCCEEDED + 1))
                    echo "done   $(label "$i") in $(($(date +%s) - STARTED[$pid])) s" >&2
                else
                    FAILED+=("$i:$status")
                    echo "FAILED $(label "$i") (exit $status): $(error_line "$(log_file "$i")")" >&2
                fi
                unset "RUNNING[$pid]" "STARTED[$pid]"
                return
            fi
        done
        sleep 0.2
    done
}

stop_all() {
    local pid
    echo "interrupted: stopping ${#RUNNING[@]} running run(s); re-run the same command to resume" >&2
    for pid in "${!RUNNING[@]}"; do
        kill "$pid" 2>/dev/null
    done
    wait
    exit 130
}
trap stop_all INT TERM

for i in "${PENDING[@]}"; do
    while ((${#RUNNING[@]} >= WORKERS)); do
        reap_one
    done
    build_command "$i"
    count=$((count + 1))
    resume_note=""
    if resumable "$i"; then
        checkpoint=$(checkpoint_file "$i")
        resume_note=" (resume from ${checkpoint#"$WORKDIR"/})"
    else
        : >"$(log_file "$i")" # a fresh run starts a fresh log; a resumed one appends to its interrupted part's
    fi
    # exec: the pid we hold is the script's own, so an interrupt reaches it directly
    (cd "$WORKDIR" && OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS exec "${CMD[@]}") >>"$(log_file "$i")" 2>&1 </dev/null &
    RUNNING[$!]=$i
    STARTED[$!]=$(date +%s)
    echo "start  [$count/${#PENDING[@]}] $(label "$i") -> $(log_file "$i")$resume_note" >&2
done
while ((${#RUNNING[@]})); do
    reap_one
done
trap - INT TERM

echo "$TOTAL combinations: $SUCCEEDED finished now, ${#SKIPPED[@]} skipped (already finished), ${#FAILED[@]} failed" >&2
if ((${#FAILED[@]})); then
    echo "failed runs (re-running the same command retries only these):" >&2
    for failure in "${FAILED[@]}"; do
        i=${failure%%:*}
        build_command "$i"
        echo "  $(label "$i"): exit ${failure#*:}, log $(log_file "$i")" >&2
        echo "    $(error_line "$(log_file "$i")")" >&2
        echo "    command: $(quoted "${CMD[@]}")" >&2
    done
    exit 1
fi
