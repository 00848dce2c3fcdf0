#!/usr/bin/env bash
# A real single-node Slurm on this machine, to try `./benchmark.sh --slurm` without a cluster (and to test it in CI):
# munged, slurmctld and slurmd as root, this machine the only node of the partition "local".
#
#   benchmark/slurm_local.sh install   install Debian's slurmctld, slurmd, slurm-client and munge where missing (apt-get)
#   benchmark/slurm_local.sh up        install check, munge key, /etc/slurm/slurm.conf, the daemons; waits until the
#                                      node is idle. Idempotent: what already runs is kept, the rest started.
#   benchmark/slurm_local.sh status    exit 0 when this script's cluster is up with its node usable, else 1
#   benchmark/slurm_local.sh down      cancel its jobs, stop the daemons that `up` started, remove its slurm.conf
#
# options (up): --cpus N    CPUs of the node, at most this many one-CPU tasks at once (default: all cores)
#               --nice N    niceness of the jobs (default 10: they yield the CPU to this machine's other work)
#               --timeout S seconds to wait for each daemon and for the node (default 60)
# Needs root (or sudo): it writes /etc/slurm/slurm.conf and runs slurmd as root. Its state, logs and the job
# completion log (what `sacct -c` reads: there is no slurmdbd) live in $SLURM_LOCAL_STATE (default /var/lib/cleanil-slurm).
# A slurm.conf not written by this script is never touched: on a machine with its own Slurm, use that one.
# Exit status: 0 done, 1 the cluster is not up (status), 2 bad usage, 3 this machine cannot run it (reason on stderr).
set -uo pipefail

STATE="${SLURM_LOCAL_STATE:-/var/lib/cleanil-slurm}"
CONF=/etc/slurm/slurm.conf
MARKER="# written by cleanil benchmark/slurm_local.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)
COMMANDS=(munged munge unmunge slurmctld slurmd sbatch squeue sinfo scontrol scancel sacct)
NODE="$(hostname -s 2>/dev/null || hostname)"

usage() {
    sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

die() { # exit 2: a usage mistake
    echo "error: $*" >&2
    exit 2
}

cannot() { # exit 3: this machine cannot run a local Slurm (the caller may skip, e.g. a test)
    echo "cannot run a local Slurm: $*" >&2
    exit 3
}

log_tail() { # file: its last lines, indented, for an error message
    [[ -r "$1" ]] && tail -n "${2:-8}" "$1" | sed 's/^/    /' >&2
}

positive_int() { # name value
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'; see benchmark/slurm_local.sh --help."
}

MODE="" CPUS="" NICE=10 TIMEOUT=60
while (($#)); do
    case "$1" in
        install | up | status | down) [[ -z "$MODE" ]] || die "one mode at a time, got '$MODE' and '$1'."; MODE="$1"; shift ;;
        --cpus | --nice | --timeout)
            (($# >= 2)) || die "$1 needs a value; see benchmark/slurm_local.sh --help."
            case "$1" in --cpus) CPUS="$2" ;; --nice) NICE="$2" ;; --timeout) TIMEOUT="$2" ;; esac
            shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1'; the modes are install, up, status and down (see benchmark/slurm_local.sh --help)." ;;
    esac
done
[[ -n "$MODE" ]] || die "no mode; run benchmark/slurm_local.sh up (or install, status, down; see --help)."
[[ -z "$CPUS" ]] || positive_int --cpus "$CPUS"
positive_int --timeout "$TIMEOUT"
[[ "$NICE" =~ ^-?[0-9]+$ ]] || die "--nice must be an integer (-20 to 19), got '$NICE'."
CPUS="${CPUS:-$(env -u OMP_NUM_THREADS nproc 2>/dev/null || echo 1)}"

missing_commands() {
    local command missing=()
    for command in "${COMMANDS[@]}"; do
        command -v "$command" >/dev/null 2>&1 || [[ -x "/usr/sbin/$command" ]] || missing+=("$command")
    done
    echo "${missing[*]}"
}

need_root() {
    ((EUID == 0)) || cannot "'$MODE' needs root (it writes $CONF and runs slurmd as root); run it with sudo."
}

install() {
    local missing
    missing=$(missing_commands)
    if [[ -z "$missing" ]]; then
        [[ "$MODE" == install ]] && echo "Slurm and munge are installed: ${COMMANDS[*]}" >&2
        return 0
    fi
    need_root
    command -v apt-get >/dev/null || cannot "Slurm is not installed (missing: $missing) and there is no apt-get; install slurmctld, slurmd, slurm-client and munge with this system's package manager."
    echo "installing ${PACKAGES[*]} (missing: $missing)" >&2
    export DEBIAN_FRONTEND=noninteractive
    local attempt
    : >"$STATE/log/apt.log"
    for attempt in 1 2; do
        # the package lists may be stale or absent (a fresh container): refresh them when the first attempt fails
        ((attempt == 2)) && { timeout 120 apt-get update -q >>"$STATE/log/apt.log" 2>&1 || true; }
        if timeout 240 apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$STATE/log/apt.log" 2>&1; then
            missing=$(missing_commands)
            [[ -z "$missing" ]] && { echo "installed ${PACKAGES[*]}" >&2; return 0; }
        fi
    done
    echo "apt-get log ($STATE/log/apt.log):" >&2
    log_tail "$STATE/log/apt.log"
    cannot "apt-get could not install ${PACKAGES[*]} (still missing: ${missing:-nothing}); see the log above."
}

pid_alive() { # pid-file expected-name: the pid when that process runs
    local pid
    [[ -r "$1" ]] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2"* ]] && echo "$pid"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
ctld_up() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { timeout 10 sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1; }
node_usable() { [[ "$(node_state)" =~ ^(idle|mix|alloc|comp)$ ]]; }
our_conf() { [[ -f "$CONF" ]] && head -n 1 "$CONF" | grep -qF "$MARKER"; }

wait_for() { # seconds command...: poll until the command succeeds, for at most that long
    local seconds="$1" deadline
    deadline=$(($(date +%s) + seconds))
    shift
    until "$@"; do
        (($(date +%s) < deadline)) || return 1
        sleep 0.5
    done
}

write_conf() {
    mkdir -p "$(dirname "$CONF")" "$STATE/slurmctld" "$STATE/slurmd" "$STATE/log"
    local conf
    conf="$MARKER (a single-node Slurm to try ./benchmark.sh --slurm; benchmark/slurm_local.sh down removes it)
ClusterName=cleanil-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups, no slurmdbd: plain process tracking, and the job completion log for sacct -c
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/job_completions.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
# finished jobs stay visible to squeue --states=all and scontrol show job for an hour
MinJobAge=3600
SlurmdTimeout=120
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP"
    if [[ -f "$CONF" ]] && [[ "$(cat "$CONF")" == "$conf" ]]; then
        return 0
    fi
    echo "$conf" >"$CONF" || cannot "cannot write $CONF."
    # a running controller and node daemon read the new configuration
    ctld_up && timeout 10 scontrol reconfigure >/dev/null 2>&1
    return 0
}

start_munged() {
    if munge_works; then
        return 0
    fi
    local key=/etc/munge/munge.key
    if [[ ! -s "$key" ]]; then
        mkdir -p /etc/munge
        if ! mungekey --create --keyfile="$key" 2>/dev/null; then
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none || cannot "cannot create the munge key $key."
        fi
    fi
    chown munge:munge "$key" /etc/munge && chmod 0400 "$key" && chmod 0700 /etc/munge || cannot "cannot give $key to the munge user."
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    runuser -u munge -- munged --force >/dev/null 2>&1 9>&-  # 9: our lock, not for the daemons
    if ! wait_for "$TIMEOUT" munge_works; then
        echo "munged log (/var/log/munge/munged.log):" >&2
        log_tail /var/log/munge/munged.log
        return 1
    fi
    touch "$STATE/started.munged"
    echo "started munged" >&2
}

port_taken() { # port: something other than our daemons listens there
    command -v ss >/dev/null || return 1
    [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]
}

start_slurm_daemon() { # slurmctld|slurmd
    local daemon="$1" port pid
    if pid_alive "$STATE/$daemon.pid" "$daemon" >/dev/null; then
        return 0
    fi
    [[ "$daemon" == slurmctld ]] && port=6817 || port=6818
    if port_taken "$port"; then
        cannot "port $port (the ${daemon}'s) is taken by another program, another Slurm perhaps; stop it or use that Slurm."
    fi
    : >>"$STATE/log/$daemon.log"
    if [[ "$daemon" == slurmctld ]]; then
        slurmctld -i >/dev/null 2>&1 9>&-
    else
        # the jobs inherit slurmd's niceness (PropagatePrioProcess=0): they yield to this machine's other work
        nice -n "$NICE" slurmd -N "$NODE" >/dev/null 2>&1 9>&-
    fi
    if ! wait_for "$TIMEOUT" pid_alive "$STATE/$daemon.pid" "$daemon" >/dev/null; then
        echo "$daemon did not start; its log ($STATE/log/$daemon.log):" >&2
        log_tail "$STATE/log/$daemon.log"
        return 1
    fi
    touch "$STATE/started.$daemon"
    echo "started $daemon" >&2
}

start_cluster() {
    start_munged || return 1
    write_conf
    start_slurm_daemon slurmctld || return 1
    if ! wait_for "$TIMEOUT" ctld_up; then
        echo "slurmctld does not answer scontrol ping; its log:" >&2
        log_tail "$STATE/log/slurmctld.log"
        return 1
    fi
    start_slurm_daemon slurmd || return 1
    if ! wait_for "$TIMEOUT" node_usable; then
        # a node left down or drained by an earlier run of this cluster: bring it back once
        timeout 10 scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1
        if ! wait_for 10 node_usable; then
            echo "node $NODE is '$(node_state)' ($(timeout 10 sinfo -h -R -n "$NODE" -o %E 2>/dev/null)), not idle; the logs:" >&2
            log_tail "$STATE/log/slurmctld.log"
            log_tail "$STATE/log/slurmd.log"
            return 1
        fi
    fi
}

stop_ours() { # the daemons that up started, newest first; their jobs cancelled first so no task outlives its slurmd
    local daemon pid
    if [[ -f "$STATE/started.slurmctld" ]] && ctld_up; then
        timeout 10 scancel --quiet --partition=local >/dev/null 2>&1
        wait_for 20 bash -c '[[ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ]]'
    fi
    for daemon in slurmd slurmctld munged; do
        [[ -f "$STATE/started.$daemon" ]] || continue
        if [[ "$daemon" == munged ]]; then
            pid=$(pid_alive /run/munge/munged.pid munged)
        else
            pid=$(pid_alive "$STATE/$daemon.pid" "$daemon")
        fi
        if [[ -n "$pid" ]]; then
            kill -TERM "$pid" 2>/dev/null
            wait_for 15 bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null
            echo "stopped $daemon (pid $pid)" >&2
        fi
        rm -f "$STATE/started.$daemon"
    done
}

# ------------------------------------------------------------------------------------------------------------ modes
if [[ "$MODE" == status ]]; then
    if our_conf && ctld_up && node_usable; then
        echo "up: cluster cleanil-local, node $NODE $(node_state), partition local ($CONF)"
        exit 0
    fi
    echo "down: no cluster of benchmark/slurm_local.sh answers (benchmark/slurm_local.sh up starts one)"
    exit 1
fi

need_root
mkdir -p "$STATE/log" || cannot "cannot create $STATE."
exec 9>"$STATE/lock"
flock -w 300 9 || cannot "another benchmark/slurm_local.sh holds $STATE/lock."

case "$MODE" in
    install)
        install
        ;;
    up)
        if [[ -f "$CONF" ]] && ! our_conf; then
            cannot "$CONF exists and was not written by this script: this machine has a Slurm of its own; use it (or move that file away)."
        fi
        if our_conf && ctld_up && node_usable && munge_works; then
            echo "already up: node $NODE $(node_state), partition local" >&2
            exit 0
        fi
        install || exit
        # a failed start leaves nothing behind: what this run (or an earlier one) started is stopped, the conf removed
        trap 'status=$?; if ((status != 0)); then stop_ours; our_conf && rm -f "$CONF"; fi' EXIT
        start=$(date +%s)
        if ! start_cluster; then
            echo "retrying once, after stopping what was started" >&2
            stop_ours
            start_cluster || { stop_ours; cannot "the daemons did not come up (see the logs above, in $STATE/log)."; }
        fi
        echo "up in $(($(date +%s) - start)) s: node $NODE ($CPUS CPUs, jobs at nice $NICE) $(node_state), partition local; $CONF" >&2
        ;;
    down)
        stop_ours
        if our_conf; then
            rm -f "$CONF"
            echo "removed $CONF" >&2
        fi
        ;;
esac
exit 0
