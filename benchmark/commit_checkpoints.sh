#!/usr/bin/env bash
# Commits long_runs/ whenever a checkpoint in it changed, polling every minute, until killed:
#   benchmark/commit_checkpoints.sh &
# Only the long_runs/ paths are committed (git commit --only), so it never sweeps up other work in progress.
cd "$(dirname "$0")/.."
while true; do
    if [ -n "$(git status --porcelain -- long_runs)" ]; then
        for attempt in 1 2 3 4 5; do  # another git command may hold the index lock for a moment
            git add -- long_runs && git commit --quiet -m "long_runs: checkpoints at $(date -u +%H:%M)" --only -- long_runs && break
            sleep 5
        done
    fi
    sleep 60
done
