#!/usr/bin/env bash
# The classic-control sweep behind the README's results table: every algorithm on its classic-control envs, 3 seeds,
# from the shipped experts. One benchmark.sh call per (env, settings); a finished run is skipped, so re-running this
# file resumes it. Extra arguments (e.g. --workers 2, --workdir DIR) go to every benchmark.sh call.
#   benchmark/classic_control.sh --workers 2 && ./benchmark.sh report
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
sweep() { ./benchmark.sh --seeds 3 "$@" || status=1; }
EXTRA=("$@")

# Discrete envs. GAIL's reward: -log(1 - D) (a survival bonus) where failure ends the episode (CartPole), log D (a
# per-step cost) where success does (Acrobot, MountainCar), as in the original GAIL code; PMI-IL likewise.
sweep --algos "gail gaifo" --env-ids CartPole-v1 "${EXTRA[@]}" -- --total-timesteps 100000 --eval-frequency 10000
sweep --algos "gail gaifo" --env-ids "Acrobot-v1 MountainCar-v0" "${EXTRA[@]}" -- --reward-type log_d --total-timesteps 300000 --eval-frequency 20000
sweep --algos pmi_il --env-ids CartPole-v1 "${EXTRA[@]}" -- --total-timesteps 100000
sweep --algos pmi_il --env-ids Acrobot-v1 "${EXTRA[@]}" -- --no-reward-shift --total-timesteps 100000
sweep --algos pmi_il --env-ids MountainCar-v0 "${EXTRA[@]}" -- --no-reward-shift --negatives agent --total-timesteps 100000
sweep --algos "bco ilpo bc dagger" --env-ids "CartPole-v1 Acrobot-v1 MountainCar-v0" "${EXTRA[@]}"
sweep --algos reinforce --env-ids "CartPole-v1 Acrobot-v1" "${EXTRA[@]}" -- --baseline

# Continuous: Pendulum-v1.
sweep --algos "bc dagger bco" --env-ids Pendulum-v1 "${EXTRA[@]}"
sweep --algos "gail gaifo" --env-ids Pendulum-v1 "${EXTRA[@]}" -- --total-timesteps 300000 --eval-frequency 20000
sweep --algos "cfil nail" --env-ids Pendulum-v1 "${EXTRA[@]}" -- --total-timesteps 20000 --eval-frequency 2000 --learning-starts 1000
exit $status
