#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside (never instead of) the main broker on 5672:
# Debian's rabbitmq-server run as extra nodes saga-c1@localhost .. saga-c3@localhost, each with its own
# AMQP port (5681-5683), distribution port (25681-25683), data and log directories under one state
# directory, and one Erlang cookie of their own. Management and every other plugin stay off.
#
#   scripts/rabbitmq-cluster.sh start          start the nodes that are down and join them (idempotent)
#   scripts/rabbitmq-cluster.sh status         exit 0 if all three run as one cluster, 1 otherwise
#   scripts/rabbitmq-cluster.sh stop-node N    stop node N gracefully (N = 1, 2 or 3)
#   scripts/rabbitmq-cluster.sh kill-node N    SIGKILL node N (a crash rather than a shutdown)
#   scripts/rabbitmq-cluster.sh start-node N   start node N again; it rejoins the cluster
#   scripts/rabbitmq-cluster.sh urls           the AMQP URLs, comma-separated (for SAGA_AMQP_URL)
#   scripts/rabbitmq-cluster.sh ctl N ARGS...  rabbitmqctl ARGS against node N (with the cookie)
#   scripts/rabbitmq-cluster.sh stop           stop every node and delete the state directory
#
# Settings (environment): SAGA_CLUSTER_DIR (state, default /tmp/saga-rabbitmq-cluster),
# SAGA_CLUSTER_PORT (first AMQP port, default 5681), SAGA_CLUSTER_BOOT_TIMEOUT (seconds one node may
# take to boot, default 180), RABBITMQ_BIN_DIR (the unwrapped scripts, default
# /usr/lib/rabbitmq/bin: Debian's /usr/sbin wrappers would switch to the rabbitmq user and read
# /etc/rabbitmq, which belong to the main broker).
#
# Starting the three nodes from nothing takes 26-35 s on a loaded two-core machine; stop-node about
# 4 s, start-node about 8 s.
set -euo pipefail

DIR="${SAGA_CLUSTER_DIR:-/tmp/saga-rabbitmq-cluster}"
PORT="${SAGA_CLUSTER_PORT:-5681}"
BIN="${RABBITMQ_BIN_DIR:-/usr/lib/rabbitmq/bin}"
NODES=(1 2 3)
# How long one node may take to boot; a fresh node on a loaded two-core machine needs tens of seconds.
BOOT_TIMEOUT="${SAGA_CLUSTER_BOOT_TIMEOUT:-180}"

log() { echo "rabbitmq-cluster: $*" >&2; }
die() {
    log "$*"
    exit 1
}

node_name() { echo "saga-c$1@localhost"; }
amqp_port() { echo $((PORT + $1 - 1)); }
node_dir() { echo "$DIR/n$1"; }

check_node() {
    case "${1:-}" in
    1 | 2 | 3) ;;
    *) die "no node ${1:-(none)}: nodes are 1, 2 and 3" ;;
    esac
}

need_rabbitmq() {
    [ -x "$BIN/rabbitmq-server" ] && [ -x "$BIN/rabbitmqctl" ] ||
        die "no RabbitMQ scripts in $BIN (install Debian's rabbitmq-server, or set RABBITMQ_BIN_DIR)"
    command -v erl >/dev/null 2>&1 || die "no erl on PATH (Debian's rabbitmq-server brings it)"
}

# The environment every RabbitMQ script of node $1 runs in. Everything the main broker reads from
# /etc/rabbitmq and /var/lib/rabbitmq is pointed elsewhere, so the two never meet.
node_env() {
    local n="$1" dir
    dir="$(node_dir "$n")"
    export HOME="$DIR/home" # the cookie: $HOME/.erlang.cookie, for the servers and the CLI alike
    export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME="$(node_name "$n")"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/rabbit.pid"
    export RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand"
    export RABBITMQ_DIST_PORT=$((20000 + $(amqp_port "$n")))
    export ERL_EPMD_ADDRESS=127.0.0.1
    # One scheduler and no busy-waiting: three extra nodes on a shared two-core machine.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1}"
}

# rabbitmqctl against node $1. A CLI that fails writes no erl_crash.dump into the caller's directory.
ctl() {
    local n="$1"
    shift
    [ -f "$DIR/home/.erlang.cookie" ] || die "no cluster state in $DIR: run start first"
    (node_env "$n" && ERL_CRASH_DUMP_SECONDS=0 "$BIN/rabbitmqctl" -q -n "$(node_name "$n")" "$@")
}

running() {
    # Without the state directory there is no cookie, and nothing runs.
    [ -f "$DIR/home/.erlang.cookie" ] || return 1
    (node_env "$1" && ERL_CRASH_DUMP_SECONDS=0 timeout 20 "$BIN/rabbitmqctl" -q \
        -n "$(node_name "$1")" ping >/dev/null 2>&1)
}

prepare_dirs() {
    mkdir -p "$DIR/home"
    if [ ! -f "$DIR/home/.erlang.cookie" ]; then
        # Any value works as long as the three nodes and the CLI share it.
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/home/.erlang.cookie"
        chmod 400 "$DIR/home/.erlang.cookie"
    fi
    : >"$DIR/rabbitmq-env.conf"
    echo '[].' >"$DIR/enabled_plugins"
    local n dir
    for n in "${NODES[@]}"; do
        dir="$(node_dir "$n")"
        mkdir -p "$dir/mnesia" "$dir/log"
        cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
log.console = false
log.file.level = info
EOF
    done
}

start_one() {
    local n="$1"
    if running "$n"; then
        return 0
    fi
    log "starting $(node_name "$n") on port $(amqp_port "$n")"
    (node_env "$n" && cd "$DIR" && "$BIN/rabbitmq-server" -detached \
        >>"$(node_dir "$n")/log/startup.log" 2>&1)
}

await_one() {
    local n="$1" deadline
    deadline=$(($(date +%s) + BOOT_TIMEOUT))
    # await_startup fails at once while the Erlang node is not registered yet: ask again.
    until ctl "$n" --timeout 30 await_startup >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "$(node_name "$n") did not boot within ${BOOT_TIMEOUT}s; its logs: $(node_dir "$n")/log"
            tail -n 30 "$(node_dir "$n")"/log/*.log >&2 2>/dev/null || true
            return 1
        fi
        sleep 1
    done
}

# The nodes running in node $1's cluster, one per line.
members() {
    ctl "$1" eval 'rabbit_nodes:all_running().' 2>/dev/null | grep -o "saga-c[0-9]@localhost" || true
}

joined() {
    members 1 | grep -qx "$(node_name "$1")"
}

join_one() {
    local n="$1"
    joined "$n" && return 0
    log "joining $(node_name "$n") to $(node_name 1)"
    local out="$(node_dir "$n")/log/join.log"
    # The CLI prints the node's boot warnings; keep them for when joining fails.
    if ! {
        ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster "$(node_name 1)" &&
            ctl "$n" start_app
    } >"$out" 2>&1; then
        cat "$out" >&2
        die "joining $(node_name "$n") failed"
    fi
    await_one "$n"
}

urls() {
    local n out=""
    for n in "${NODES[@]}"; do
        out="$out${out:+,}amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"
    done
    echo "$out"
}

cmd_start() {
    need_rabbitmq
    local began n
    began=$(date +%s)
    prepare_dirs
    # Boot in parallel, then wait for each: booting is mostly waiting on Mnesia and the disk.
    for n in "${NODES[@]}"; do start_one "$n"; done
    for n in "${NODES[@]}"; do await_one "$n"; done
    for n in 2 3; do join_one "$n"; done
    cmd_status >/dev/null || die "the nodes run but do not form one cluster: $(members 1 | tr '\n' ' ')"
    log "cluster up in $(($(date +%s) - began))s: $(urls)"
}

cmd_status() {
    local n up=0 members_of_1
    for n in "${NODES[@]}"; do
        if running "$n"; then
            echo "$(node_name "$n") running on port $(amqp_port "$n")"
            up=$((up + 1))
        else
            echo "$(node_name "$n") down"
        fi
    done
    [ "$up" = 3 ] || return 1
    members_of_1="$(members 1 | sort -u | wc -l)"
    echo "cluster of $(node_name 1): $members_of_1 running nodes"
    [ "$members_of_1" = 3 ]
}

cmd_stop_node() {
    local n="$1" pid
    check_node "$n"
    running "$n" || {
        log "$(node_name "$n") is not running"
        return 0
    }
    log "stopping $(node_name "$n")"
    # With the pid file, rabbitmqctl waits until the process is gone.
    ctl "$n" stop "$(node_dir "$n")/rabbit.pid" >/dev/null
    pid="$(cat "$(node_dir "$n")/rabbit.pid" 2>/dev/null || true)"
    [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null || die "$(node_name "$n") (pid $pid) still runs"
}

cmd_kill_node() {
    local n="$1" pid
    check_node "$n"
    pid="$(cat "$(node_dir "$n")/rabbit.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || {
        log "$(node_name "$n") is not running"
        return 0
    }
    log "killing $(node_name "$n") (pid $pid)"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

cmd_start_node() {
    local n="$1"
    check_node "$n"
    need_rabbitmq
    [ -d "$(node_dir "$n")/mnesia" ] || die "no cluster state in $DIR: run start first"
    start_one "$n"
    await_one "$n"
    log "$(node_name "$n") is up"
}

cmd_stop() {
    local n pid
    for n in "${NODES[@]}"; do
        pid="$(cat "$(node_dir "$n")/rabbit.pid" 2>/dev/null || true)"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "stopping $(node_name "$n")"
            # A whole cluster going away needs no graceful order: its state is deleted below.
            kill -KILL "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        fi
    done
    rm -rf "$DIR"
}

case "${1:-}" in
start) cmd_start ;;
status) cmd_status ;;
stop-node) cmd_stop_node "${2:-}" ;;
kill-node) cmd_kill_node "${2:-}" ;;
start-node) cmd_start_node "${2:-}" ;;
urls) urls ;;
ctl)
    check_node "${2:-}"
    n="$2"
    shift 2
    ctl "$n" "$@"
    ;;
stop) cmd_stop ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
