#!/usr/bin/env bash
# Local three-node Apache Kafka cluster (KRaft) for fault tests and the chaos soak.
#
# Three combined broker+controller nodes, each a kafka/broker.sh broker with its own ports,
# state folder, log and pid file, in one static controller quorum. Replication factor 3 and
# min.insync.replicas=2 for internal and auto-created topics. Run `kafka/cluster.sh --help`.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
BROKER_SH="$SCRIPT_DIR/broker.sh"

HOST="127.0.0.1"
NODES=(1 2 3)
BASE_PORT="${KAFKA_CLUSTER_PORT:-19092}"
STATE_DIR="${KAFKA_CLUSTER_STATE_DIR:-$REPO_ROOT/.kafka-cluster}"
LIBS_DIR="${KAFKA_LIBS_DIR:-$STATE_DIR/libs}"
LOCK_FILE="$STATE_DIR/cluster.lock"
LOCK_TIMEOUT="${KAFKA_LOCK_TIMEOUT:-300}"
# Three JVMs beside the test suite on 2 cores: a small heap, and the single broker's start-up
# oriented JIT flags (broker.sh's defaults) unless overridden.
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx384m}"
# How long a dead node keeps its partitions before the controller fences it and elects new
# leaders (Kafka's default is 9 s). Lower: shorter failovers; too low: nodes fenced under load.
SESSION_MS="${KAFKA_CLUSTER_SESSION_MS:-6000}"

usage() {
    cat <<EOF
Usage: kafka/cluster.sh <command> [node]

Local three-node Apache Kafka cluster (KRaft; each node a combined broker + controller started
by kafka/broker.sh), for fault tests. Replication factor 3, min.insync.replicas=2,
unclean leader election off.

Commands:
  up          Start the nodes that are not running (all three at once), or reuse them; waits
              until every node accepts connections. Serialised by a lock; safe to repeat.
  down        Stop every node (SIGTERM, then SIGKILL after 30 s). Fine if not running.
  status      One line per node; exit 0 if all three run, 1 if not.
  reset       Delete the nodes' data (the cluster must be down): the next 'up' starts empty.
  bootstrap   Print the bootstrap servers (all three nodes).
  start N     Start node N (1-3) again, or reuse it; waits until it is ready.
  stop N      Stop node N cleanly (SIGTERM; controlled shutdown moves its leaders first).
  kill N      SIGKILL node N: a crash. Its partitions move when its session (${SESSION_MS} ms) ends.
  pause N     SIGSTOP node N (a hung or very slow node); 'resume N' sends SIGCONT.
  pid N       Print node N's pid (exit 1 if it is not running).
  logs N      The end of node N's log (options as 'kafka/broker.sh logs').
  -h, --help  Show this help.

Environment:
  KAFKA_CLUSTER_PORT       Node 1's broker port (default 19092). Node N listens on
                           PORT+2(N-1) and its controller on the port after that:
                           ${HOST}:$BASE_PORT-$((BASE_PORT + 5)) with the default.
  KAFKA_CLUSTER_STATE_DIR  State: node1/ node2/ node3/ (data, config, log, pid) and the
                           jars (default <repo>/.kafka-cluster).
  KAFKA_CLUSTER_SESSION_MS broker.session.timeout.ms (default 6000).
  KAFKA_HEAP_OPTS          Heap of each node (default -Xms128m -Xmx384m).
  KAFKA_LIBS_DIR, KAFKA_CDS, KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_OPTS, KAFKA_LOG_LEVEL,
  KAFKA_START_TIMEOUT      As for kafka/broker.sh, for every node.
EOF
}

log() { echo "kafka-cluster: $*"; }
die() { echo "kafka-cluster: error: $*" >&2; exit 1; }

port_of() { echo $((BASE_PORT + 2 * ($1 - 1))); }
controller_port_of() { echo $((BASE_PORT + 2 * ($1 - 1) + 1)); }
node_dir() { echo "$STATE_DIR/node$1"; }

bootstrap() {
    local n out=()
    for n in "${NODES[@]}"; do out+=("$HOST:$(port_of "$n")"); done
    (IFS=,; echo "${out[*]}")
}

voters() {
    local n out=()
    for n in "${NODES[@]}"; do out+=("$n@$HOST:$(controller_port_of "$n")"); done
    (IFS=,; echo "${out[*]}")
}

check_settings() {
    [[ "$BASE_PORT" =~ ^[0-9]{1,5}$ && "$BASE_PORT" -ge 1 && "$BASE_PORT" -le 65530 ]] \
        || die "KAFKA_CLUSTER_PORT='$BASE_PORT' is not a TCP port (1-65530)"
    [[ "$SESSION_MS" =~ ^[0-9]+$ ]] || die "KAFKA_CLUSTER_SESSION_MS='$SESSION_MS' is not a number of milliseconds"
}

node_arg() {
    local n="${1:-}"
    [[ "$n" =~ ^[1-3]$ ]] || die "which node? give 1, 2 or 3 (got '${n}')"
    echo "$n"
}

# node N CMD...: run kafka/broker.sh CMD as node N.
node() {
    local n="$1"
    shift
    # The cluster's own settings; a KAFKA_BOOTSTRAP_SERVERS meant for the clients must not make
    # broker.sh think an external Kafka is in use.
    env -u KAFKA_BOOTSTRAP_SERVERS \
        KAFKA_STATE_DIR="$(node_dir "$n")" \
        KAFKA_PORT="$(port_of "$n")" \
        KAFKA_CONTROLLER_PORT="$(controller_port_of "$n")" \
        KAFKA_NODE_ID="$n" \
        KAFKA_QUORUM_VOTERS="$(voters)" \
        KAFKA_CLUSTER_ID="$(cluster_id)" \
        KAFKA_REPLICATION=3 \
        KAFKA_INTERNAL_PARTITIONS=3 \
        KAFKA_LIBS_DIR="$LIBS_DIR" \
        KAFKA_SSL_PORT="" KAFKA_SASL_PORT="" \
        KAFKA_EXTRA_PROPERTIES="$(extra_properties)" \
        bash "$BROKER_SH" "$@"
}

extra_properties() {
    cat <<EOF
# A replicated cluster: never elect a leader that may lack acknowledged records.
unclean.leader.election.enable=false
# How soon the controller fences a node that stopped heartbeating, and moves its leaders.
broker.session.timeout.ms=$SESSION_MS
broker.heartbeat.interval.ms=$((SESSION_MS / 6 > 0 ? SESSION_MS / 6 : 1))
EOF
}

# cluster_id: made once per state dir.
cluster_id() {
    local file="$STATE_DIR/cluster.id"
    if [[ ! -s "$file" ]]; then
        mkdir -p "$STATE_DIR"
        new_cluster_id >"$file.tmp"
        mv "$file.tmp" "$file"
    fi
    cat "$file"
}

# new_cluster_id: a random 16-byte id in Kafka's base64url form. Like Kafka's Uuid.randomUuid,
# never one that starts with '-': command-line tools would take it for an option.
new_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        if [[ "$id" != -* ]]; then
            echo "$id"
            return
        fi
    done
}

take_lock() {
    mkdir -p "$STATE_DIR"
    exec 8>>"$LOCK_FILE"
    if ! flock -n 8; then
        log "waiting for another cluster.sh in $STATE_DIR (lock $LOCK_FILE)..."
        flock -w "$LOCK_TIMEOUT" 8 || die "could not get the lock $LOCK_FILE within ${LOCK_TIMEOUT}s"
    fi
}

running() { node "$1" status >/dev/null 2>&1; }

# start_nodes N...: start the given nodes at once (a quorum needs two of them up to finish
# starting), wait for all, and fail with each failed node's output.
start_nodes() {
    local n pids=() failed=()
    for n in "$@"; do
        node "$n" up >"$STATE_DIR/node$n.up.log" 2>&1 8>&- &
        pids+=("$!")
    done
    local i
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || failed+=("${@:$((i + 1)):1}")
    done
    for n in "${failed[@]+"${failed[@]}"}"; do
        echo "--- node $n ($(node_dir "$n")):" >&2
        cat "$STATE_DIR/node$n.up.log" >&2
    done
    ((${#failed[@]} == 0)) || die "node(s) ${failed[*]} did not start (output above)"
}

cmd_up() {
    check_settings
    take_lock
    local n to_start=()
    for n in "${NODES[@]}"; do
        running "$n" || to_start+=("$n")
    done
    if ((${#to_start[@]} == 0)); then
        log "cluster already running, reusing it"
        echo "bootstrap servers: $(bootstrap)"
        return 0
    fi
    # One clear line when a port is taken, before any node starts.
    local p
    for n in "${to_start[@]}"; do
        for p in "$(port_of "$n")" "$(controller_port_of "$n")"; do
            if timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$p" 2>/dev/null; then
                die "port $HOST:$p (node $n) is already in use by another process; stop it or choose other ports with KAFKA_CLUSTER_PORT"
            fi
        done
    done
    # The jars once, before the nodes start side by side.
    node 1 libs >/dev/null
    log "starting node(s) ${to_start[*]} of a three-node cluster at $(bootstrap)"
    local t0=$SECONDS
    start_nodes "${to_start[@]}"
    log "cluster running ($((SECONDS - t0))s); state in $STATE_DIR"
    echo "bootstrap servers: $(bootstrap)"
}

cmd_down() {
    [[ -d "$STATE_DIR" ]] || { log "cluster not running"; return 0; }
    take_lock
    local n pids=()
    # All at once: the last node standing has no controller quorum to confirm its controlled
    # shutdown and would wait out the whole stop timeout, so that timeout is short here.
    for n in "${NODES[@]}"; do
        if [[ -d "$(node_dir "$n")" ]]; then
            KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-10}" node "$n" down >/dev/null 2>"$STATE_DIR/node$n.down.log" 8>&- &
            pids+=("$!")
        fi
    done
    for n in "${pids[@]+"${pids[@]}"}"; do wait "$n" || true; done
    log "cluster stopped"
}

cmd_status() {
    local n ok=0
    for n in "${NODES[@]}"; do
        if [[ -d "$(node_dir "$n")" ]] && out="$(node "$n" status 2>&1)"; then
            ok=$((ok + 1))
        else
            out="${out:-not running}"
        fi
        echo "node $n: $out"
        out=""
    done
    ((ok == ${#NODES[@]}))
}

cmd_reset() {
    take_lock
    local n
    for n in "${NODES[@]}"; do
        if running "$n"; then
            die "node $n is running; 'kafka/cluster.sh down' first"
        fi
    done
    for n in "${NODES[@]}"; do rm -rf "$(node_dir "$n")/data"; done
    rm -f "$STATE_DIR/cluster.id"
    log "cluster data deleted"
}

node_pid() {
    local n="$1" pid
    pid="$(tr -dc '0-9' <"$(node_dir "$n")/broker.pid" 2>/dev/null || true)"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

cmd_signal() {
    local signal="$1" n pid
    n="$(node_arg "${2:-}")"
    pid="$(node_pid "$n")" || die "node $n is not running"
    kill "-$signal" "$pid"
    log "node $n (pid $pid): SIG$signal"
}

main() {
    local cmd="${1:-}"
    (($#)) && shift
    case "$cmd" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        reset) cmd_reset ;;
        bootstrap) bootstrap ;;
        start) check_settings; local n; n="$(node_arg "${1:-}")"; take_lock; start_nodes "$n"; log "node $n running" ;;
        stop) local n; n="$(node_arg "${1:-}")"; node "$n" down ;;
        kill) cmd_signal KILL "$@" ;;
        pause) cmd_signal STOP "$@" ;;
        resume) cmd_signal CONT "$@" ;;
        pid) node_pid "$(node_arg "${1:-}")" ;;
        logs) local n; n="$(node_arg "${1:-}")"; shift; node "$n" logs "$@" ;;
        -h | --help | help) usage ;;
        "") usage >&2; exit 2 ;;
        *) echo "kafka-cluster: error: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
    esac
}

# Sourced (by tests), define the functions only.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
