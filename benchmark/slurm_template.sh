#!/bin/bash
# cleanil benchmark as a Slurm job array: task k runs the k-th unfinished (algorithm, env id, seed) combination.
# Rendered by `./benchmark.sh --slurm` (see `--dry-run --slurm`); whole-line placeholders: @SBATCH@ (directives from
# --partition --time --cpus-per-task --mem --sbatch-args), @ENVIRONMENT@ (threads, MUJOCO_GL, --setup, the Python:
# --python's, else the python3 the job's own environment provides after --setup; cd to the workdir), @TASKS@ (one case
# branch per combination). Edit this file to add site-specific lines for every sweep.
@SBATCH@
set -uo pipefail
@ENVIRONMENT@

case "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch (it is a job array)}" in
@TASKS@
esac

# a resubmitted array (or a task requeued after it finished) must not repeat a finished run
if compgen -G "runs/${prefix}__*/summary.json" >/dev/null; then
    echo "$name: already finished (runs/${prefix}__*/summary.json exists), nothing to do"
    exit 0
fi
if [[ -z "$python" ]] || ! "$python" -c "" >/dev/null 2>&1; then
    echo "error: $name: no working Python ('${python:-no python3 on PATH}'); give ./benchmark.sh a --setup that provides one (\"source .venv/bin/activate\", \"module load python\") or --python PATH" >&2
    exit 2
fi
mkdir -p "$(dirname "$log")"
echo "$(date '+%F %T') $name on $(hostname), OMP_NUM_THREADS=$OMP_NUM_THREADS"
echo "python: $python ($("$python" -V 2>&1))"
echo "command: ${command[*]}"
# a resumed run appends to the log of its interrupted part (--resume is added last); a fresh run starts a fresh log
[[ "${command[-1]}" == --resume ]] || : >"$log"
# the run in the background, waited for: Slurm ends a task (scancel, time limit, preemption) with SIGTERM to its
# processes, and SIGKILL after KillWait. Without the trap this shell would die at once and the job end with it, while
# its run (orphaned, no longer tracked) went on checkpointing beside a resubmitted task; with it, the run gets the
# SIGTERM (forwarded: also when only the batch shell is signalled, as with sbatch --signal=B:TERM@60), saves its
# checkpoint and exits, and only then does the task end.
"${command[@]}" >>"$log" 2>&1 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
while :; do
    wait "$child"
    status=$?
    # a trapped signal interrupts `wait` (status > 128) while the run goes on: wait again, for the run's own status
    ((status > 128)) && kill -0 "$child" 2>/dev/null || break
done
echo "$(date '+%F %T') $name exited with status $status; log: $log"
[[ $status -eq 0 ]] || tail -n 5 "$log"
exit $status
