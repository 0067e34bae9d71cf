#!/usr/bin/env bash
# Postgres and RabbitMQ on this machine, as the coordinator's defaults and its tests expect them:
# Postgres answering on 127.0.0.1:5432 with trust auth for user postgres, RabbitMQ on 127.0.0.1:5672
# (guest/guest, the package's default). Installs with apt-get, so Debian and Ubuntu only. CI (.ci/run)
# and the first run on a bare machine (scripts/up.sh) both use this script, not a copy of it.
#
#   scripts/services.sh ensure            install what is missing, start what is stopped, wait until both
#                                         answer, give user postgres trust auth on 127.0.0.1; when both
#                                         already answer it changes nothing (idempotent)
#   scripts/services.sh status            exit 0 if both answer as above, 1 otherwise, saying what is wrong
#   scripts/services.sh apt-install PKG.. apt-get install PKG.. (after one apt-get update)
#
# Sourced (`. scripts/services.sh`, as .ci/run and scripts/up.sh do) it only defines the functions
# services_ensure, services_status and services_apt_install, which then share one apt-get update.
#
# Installing, starting and editing pg_hba.conf need root: as another user the script uses sudo and
# says so, and stops with a message when there is no sudo. It starts the services directly, not
# through systemd (`pg_ctlcluster --skip-systemctl-redirect`, `rabbitmq-server -detached`), which
# works in containers too; on a machine with systemd, apt-get install usually starts them already.

services_apt_updated=0

services_log() { echo "services: $*"; }
services_die() {
    echo "services: $*" >&2
    exit 1
}

# Runs "$@" as root: directly when root, otherwise through sudo (services_need_root checks it exists).
services_as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

# Stops with a clear message when "$1" (what needs root) cannot be done: not root and no sudo.
services_need_root() {
    [ "$(id -u)" = 0 ] && return 0
    if command -v sudo >/dev/null 2>&1; then
        services_log "not root: using sudo to $1"
        return 0
    fi
    services_die "need root to $1, and sudo is not installed: run this as root, or install sudo"
}

services_apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        services_die "need to install $*, but apt-get is missing: this script installs on Debian or Ubuntu only"
    fi
    services_need_root "apt-get install $*"
    if [ "$services_apt_updated" = 0 ]; then
        services_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        services_apt_updated=1
    fi
    services_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# --- Postgres -------------------------------------------------------------------------------
services_pg_ready() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -q
}

services_pg_trust_works() {
    psql -h 127.0.0.1 -U postgres -d postgres -w -Atc 'SELECT 1' >/dev/null 2>&1
}

# The newest cluster version under /etc/postgresql (Debian's layout), or nothing.
services_pg_version() {
    local d
    for d in /etc/postgresql/*/; do
        [ -d "$d" ] || continue
        d="${d%/}"
        echo "${d##*/}"
    done | sort -V | tail -n 1
}

services_ensure_postgres() {
    local version hba tmp
    if ! services_pg_ready; then
        if ! command -v pg_ctlcluster >/dev/null 2>&1; then
            services_log "installing postgresql"
            services_apt_install postgresql postgresql-client
        fi
        version="$(services_pg_version)"
        if [ -z "$version" ]; then
            services_die "no Postgres cluster under /etc/postgresql"
        fi
        services_need_root "start Postgres"
        services_log "starting Postgres $version"
        services_as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        for _ in $(seq 1 60); do
            pg_isready -h 127.0.0.1 -q && break
            sleep 1
        done
        pg_isready -h 127.0.0.1 || services_die "Postgres $version did not start (pg_ctlcluster $version main start)"
    fi

    if ! command -v psql >/dev/null 2>&1; then
        services_log "installing postgresql-client"
        services_apt_install postgresql-client
    fi

    if ! services_pg_trust_works; then
        version="$(services_pg_version)"
        if [ -z "$version" ]; then
            services_die "cannot connect to Postgres as postgres on 127.0.0.1 without a password, and no cluster under /etc/postgresql to allow it in"
        fi
        hba="/etc/postgresql/$version/main/pg_hba.conf"
        services_need_root "edit $hba"
        services_log "giving user postgres trust auth on 127.0.0.1 in $hba"
        tmp="$(mktemp)"
        {
            echo "host    all    postgres    127.0.0.1/32    trust"
            echo "host    all    postgres    ::1/128         trust"
            services_as_root cat "$hba"
        } >"$tmp"
        # tee writes into the existing file, which keeps its owner and mode.
        services_as_root tee "$hba" <"$tmp" >/dev/null
        rm -f "$tmp"
        services_as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
        for _ in $(seq 1 30); do
            services_pg_trust_works && break
            sleep 1
        done
        if ! services_pg_trust_works; then
            services_die "cannot connect to Postgres as postgres on 127.0.0.1 without a password"
        fi
    fi
}

# --- RabbitMQ -------------------------------------------------------------------------------
services_rabbit_port_open() {
    (exec 3<>/dev/tcp/127.0.0.1/5672) >/dev/null 2>&1
}

services_ensure_rabbitmq() {
    local ok
    if services_rabbit_port_open; then
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        services_log "installing rabbitmq-server"
        services_apt_install rabbitmq-server
    fi
    # Debian's rabbitmqctl and rabbitmq-server only run as root or as user rabbitmq.
    services_need_root "start RabbitMQ"
    if ! services_as_root rabbitmqctl status >/dev/null 2>&1; then
        services_log "starting RabbitMQ"
        services_as_root rabbitmq-server -detached || true
    fi
    ok=0
    for _ in $(seq 1 5); do
        if services_as_root timeout 120 rabbitmqctl await_startup >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 2
    done
    if [ "$ok" != 1 ]; then
        services_die "RabbitMQ did not start"
    fi
    for _ in $(seq 1 60); do
        services_rabbit_port_open && break
        sleep 1
    done
    services_rabbit_port_open || services_die "RabbitMQ runs but nothing answers on 127.0.0.1:5672"
}

# --- Both -----------------------------------------------------------------------------------
services_ensure() {
    services_ensure_postgres
    services_ensure_rabbitmq
    services_log "Postgres answers on 127.0.0.1:5432 (user postgres, trust auth), RabbitMQ on 127.0.0.1:5672"
}

services_status() {
    local bad=0
    if ! services_pg_ready; then
        services_log "Postgres: nothing answers on 127.0.0.1:5432"
        bad=1
    elif ! command -v psql >/dev/null 2>&1; then
        services_log "Postgres: answers, but psql is not installed (postgresql-client)"
        bad=1
    elif ! services_pg_trust_works; then
        services_log "Postgres: answers, but user postgres cannot connect on 127.0.0.1 without a password"
        bad=1
    else
        services_log "Postgres: answers on 127.0.0.1:5432 (user postgres, trust auth)"
    fi
    if services_rabbit_port_open; then
        services_log "RabbitMQ: answers on 127.0.0.1:5672"
    else
        services_log "RabbitMQ: nothing answers on 127.0.0.1:5672"
        bad=1
    fi
    return "$bad"
}

# Run as a command (not sourced): one subcommand.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
    ensure) services_ensure ;;
    status) services_status ;;
    apt-install)
        shift
        [ "$#" -gt 0 ] || services_die "usage: $0 apt-install PACKAGE..."
        services_apt_install "$@"
        ;;
    *)
        echo "usage: $0 ensure | status | apt-install PACKAGE..." >&2
        exit 2
        ;;
    esac
fi
