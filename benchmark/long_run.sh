#!/usr/bin/env bash
# A long training (an expert, a full-length benchmark run) that survives the end of a session or a change of machine.
#
#   benchmark/long_run.sh <script.py> <env-id> <seed> [more args for the script...]
#   LONG_RUN_NAME=cfil_ss benchmark/long_run.sh cfil.py Hopper-v4 1 --mode ss   # two settings of one script and seed
#
# One thread (OMP_NUM_THREADS=1: two runs share a 2-core machine without spinning). The checkpoint lives in the
# tracked folder long_runs/<env-id>__<LONG_RUN_NAME or script>__<seed>/ (compact: no replay buffer), written every --checkpoint-minutes
# (30) and when the run is stopped (SIGINT/SIGTERM); the run resumes from it when it exists. Commit that folder
# after every checkpoint (benchmark/commit_checkpoints.sh does it in a loop), or the next session starts from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
    echo "usage: benchmark/long_run.sh <script.py> <env-id> <seed> [args...]" >&2
    exit 2
fi
script=$1 env_id=$2 seed=$3
shift 3
script=$(basename "$script" .py)
name=${LONG_RUN_NAME:-$script}
checkpoint_dir="long_runs/${env_id}__${name}__${seed}"
resume=()
[ -f "$checkpoint_dir/checkpoint.pt" ] && resume=(--resume)
mkdir -p benchmark/logs
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec python "cleanil/$script.py" --env-id "$env_id" --seed "$seed" --exp-name "$name" --checkpoint-dir "$checkpoint_dir" \
    --checkpoint-frequency 0 --checkpoint-minutes 30 "${resume[@]}" "$@"
