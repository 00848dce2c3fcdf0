#!/usr/bin/env bash
# A full-length benchmark run or expert training, planned to finish in one go, with one thread:
#
#   benchmark/long_run.sh <script.py> <env-id> <seed> [more args for the script...]
#   LONG_RUN_NAME=cfil_ss benchmark/long_run.sh cfil.py Hopper-v4 1 --mode ss   # two settings of one script and seed
#
# OMP_NUM_THREADS=1: two runs share a 2-core machine without spinning. The log goes to benchmark/logs/. A script with
# --resume (sac, cfil, nail, sqil, iq_learn) keeps its checkpoint in the git-ignored checkpoints/ folder, saved every
# 30 minutes and when stopped (SIGTERM/SIGINT); this wrapper passes --resume when that checkpoint exists, so a run
# stopped on the same machine continues. Checkpoints never go into git: every clone would download them forever.
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
resume=()
[ -f "checkpoints/${env_id}__${name}__${seed}.pt" ] && resume=(--resume)
mkdir -p benchmark/logs
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec python "cleanil/$script.py" --env-id "$env_id" --seed "$seed" --exp-name "$name" "${resume[@]}" "$@" \
    >>"benchmark/logs/${env_id}__${name}__${seed}.log" 2>&1
