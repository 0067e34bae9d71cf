#!/usr/bin/env bash
# The first command on a fresh Debian or Ubuntu machine: brings the coordinator up from this checkout.
#
#   scripts/up.sh [SERVE FLAGS...]
#
# 1. Checks for a Rust toolchain (cargo, Rust 1.85 or newer); without one it says how to install
#    rustup and exits 1 (it downloads and runs no installer itself).
# 2. Makes sure Postgres and RabbitMQ run on this machine, installing and starting them when missing
#    (scripts/services.sh ensure, the same code CI uses), with trust auth for user postgres on 127.0.0.1.
# 3. Installs what building needs when missing: a C compiler (gcc), libpq-dev and pkg-config.
# 4. Builds and runs `cargo run --release -p coordinator -- serve [SERVE FLAGS...]` in the foreground
#    (Ctrl-C stops it). Every SAGA_* setting in the environment reaches it (README, "Settings").
#
# Installing needs root: run it as root or as a user who may sudo (it says when it uses sudo).
# Run again, it installs nothing and only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/services.sh
. scripts/services.sh

log() { echo "up: $*"; }
die() {
    echo "up: $*" >&2
    exit 1
}

MIN_RUST=1.85

# --- Rust -----------------------------------------------------------------------------------
# rustup puts cargo in ~/.cargo/bin, which a shell opened before installing it lacks on its PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    export PATH
fi
if ! command -v cargo >/dev/null 2>&1; then
    die "cargo is not installed. Install Rust with rustup (https://rustup.rs), as the user who builds:
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
    (on Debian 13 or Ubuntu 24.04 and newer also: apt-get install rustup && rustup default stable),
    then open a new shell (or run: . \"\$HOME/.cargo/env\") and run scripts/up.sh again.
    This workspace needs Rust $MIN_RUST or newer, which Debian's and Ubuntu's cargo packages may predate."
fi
rust_version="$(cargo --version | awk '{print $2}')"
if [ "$(printf '%s\n%s\n' "$MIN_RUST" "$rust_version" | sort -V | head -n 1)" != "$MIN_RUST" ]; then
    die "cargo $rust_version is older than Rust $MIN_RUST, which this workspace needs: with rustup,
    run: rustup update stable (Debian's and Ubuntu's cargo packages may be older than that)"
fi
log "using cargo $rust_version"

# --- Postgres and RabbitMQ ------------------------------------------------------------------
services_ensure

# --- What building needs --------------------------------------------------------------------
# ring and zstd-sys compile C; diesel links libpq (found through pkg-config or pg_config).
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
if command -v dpkg >/dev/null 2>&1; then
    dpkg -s libpq-dev >/dev/null 2>&1 || missing+=(libpq-dev)
fi
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        log "installing ${missing[*]} (to build the coordinator)"
        services_apt_install "${missing[@]}"
    else
        log "not Debian or Ubuntu: if the build fails, install a C compiler, libpq's headers and pkg-config"
    fi
fi

# --- Headless Chromium: the second command, cargo test --workspace, drives the dashboard ------
if [ ! -x "${E2E_CHROMIUM:-/usr/bin/chromium}" ] || [ ! -x "${E2E_CHROMEDRIVER:-/usr/bin/chromedriver}" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        log "installing chromium and chromium-driver (the tests' dashboard test drives them)"
        services_apt_install chromium chromium-driver
    else
        log "not Debian or Ubuntu: the tests' dashboard test needs Chromium and ChromeDriver"
    fi
fi

# --- The coordinator ------------------------------------------------------------------------
log "building the coordinator (the first build takes several minutes)"
cargo build --release -p coordinator

addr="${SAGA_HTTP_ADDR:-127.0.0.1:8080}"
host="${addr%:*}"
port="${addr##*:}"
case "$host" in
0.0.0.0 | "[::]" | "") host=127.0.0.1 ;;
esac
if [ "$port" = 0 ]; then
    log "starting the coordinator; the dashboard is at the address its 'coordinator listening on' line prints"
else
    log "starting the coordinator; once it logs 'coordinator listening on', the dashboard is at http://$host:$port/"
fi
log "Ctrl-C stops it; in another shell, cargo test --workspace runs the tests beside it"
exec cargo run --release -p coordinator -- serve "$@"
