#!/usr/bin/env bash
# A long training (an expert, a full-length benchmark run) that survives the end of a session or a change of machine.
#
#   benchmark/long_run.sh <script.py> <env-id> <seed> [more args for the script...]
#
# One thread (OMP_NUM_THREADS=1: two runs share a 2-core machine without spinning). The checkpoint lives in the
# tracked folder long_runs/<env-id>__<script>__<seed>/ (compact: no replay buffer), written every --checkpoint-minutes
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
name=$(basename "$script" .py)
checkpoint_dir="long_runs/${env_id}__${name}__${seed}"
resume=()
[ -f "$checkpoint_dir/checkpoint.pt" ] && resume=(--resume)
mkdir -p benchmark/logs
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec python "cleanil/$name.py" --env-id "$env_id" --seed "$seed" --checkpoint-dir "$checkpoint_dir" \
    --checkpoint-frequency 0 --checkpoint-minutes 30 "${resume[@]}" "$@"
