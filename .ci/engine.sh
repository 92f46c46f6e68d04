#!/usr/bin/env bash
# Brings up the container stack the tests must meet: the one users run, not this machine's distro's.
#
#   eval "$(bash .ci/engine.sh)"     # then: cargo test --workspace --locked
#
# - Docker Engine 28+ on the default socket. A running 28+ engine (a GitHub runner's) is used as it
#   is. Otherwise Debian unstable's `docker.io` (28.x) is fetched by package name into a cache
#   outside the repository (a private apt state: no system-wide upgrade) and started.
# - containerd 2.x binaries for the kind-node fixture (kind v0.32's nodes run containerd 2.3):
#   Debian unstable's `containerd` (2.1.x), same cache. The tests find them via IRIS_FIXTURE_BIN.
# - A second engine with Docker's containerd image store (`features.containerd-snapshotter`, the
#   default of fresh Docker 29 installs) on its own socket, data root and network namespace; the
#   image build/save/load tests also run against it, found via IRIS_TEST_DOCKER_CONTAINERD_STORE.
#   It lives in IRIS_ENGINE_CS_DIR (default /run/iris-docker-cs), with a marker file naming the
#   dockerd this script started there and for which cache; a later run reuses it only if that
#   dockerd is still the one running, and refuses anything else it finds there (an engine it did
#   not start, or one started for another cache), saying how to stop it.
#
# Logs go to stderr; stdout is only `export` lines for the caller to eval. Root (or sudo) needed to
# start an engine. Set IRIS_ENGINE_CACHE to move the cache (default ~/.cache/iris-serve/engine),
# IRIS_ENGINE_CS_DIR (and IRIS_ENGINE_CS_DATA_ROOT, default /var/lib/<name of that dir>) to run the
# second engine elsewhere.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

CACHE="${IRIS_ENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/iris-serve/engine}"
BIN="$CACHE/bin"
MIN_DOCKER_MAJOR=28

major() { printf '%s' "${1%%.*}" | tr -cd '0-9'; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >&2
    $SUDO apt-get install -y -qq "$@" >&2
}

# Debian unstable's docker.io and containerd, unpacked once into $BIN (kept between runs).
fetch_unstable_binaries() {
    if [ -f "$BIN/.complete" ]; then
        log "cached engine binaries: $(tr '\n' ' ' <"$BIN/.complete")($BIN)"
        return
    fi
    command -v apt-get >/dev/null || die "no apt-get: install Docker Engine ${MIN_DOCKER_MAJOR}+ and containerd 2.x yourself, then set IRIS_FIXTURE_BIN to the folder holding containerd, ctr, containerd-shim-runc-v2 and runc"
    local work
    work=$(mktemp -d)
    mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/debs"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        # The machine's own first Debian entry (deb822 stanza), with the suite changed to sid.
        awk 'BEGIN { RS = ""; ORS = "\n\n" } NR == 1' /etc/apt/sources.list.d/debian.sources |
            sed -E 's/^Suites:.*/Suites: sid/' >"$work/apt/unstable.sources"
    else
        # Not Debian (an Ubuntu runner): Debian's own mirror, checked with Debian's keyring.
        [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || apt_install debian-archive-keyring
        printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: sid' 'Components: main' \
            'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$work/apt/unstable.sources"
    fi
    local opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$work/apt"
        -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
        -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
    log "fetching docker.io and containerd from Debian unstable (private apt state in $work)"
    apt-get "${opts[@]}" update -qq >&2
    (cd "$work/debs" && apt-get "${opts[@]}" download docker.io containerd >&2)
    local unpacked="$work/x" staging="$CACHE/bin.partial"
    rm -rf "$staging"
    mkdir -p "$staging" "$unpacked"
    for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$unpacked"; done
    cp "$unpacked"/usr/sbin/dockerd "$unpacked"/usr/sbin/docker-proxy "$staging"/
    cp "$unpacked"/usr/bin/containerd "$unpacked"/usr/bin/containerd-shim-runc-v2 "$unpacked"/usr/bin/ctr "$staging"/
    # unstable's runc needs a newer glibc; the system's (bookworm 1.1.x) works with both.
    command -v runc >/dev/null || apt_install runc
    cp "$(command -v runc)" "$staging"/runc
    {
        echo "docker.io $(dpkg-deb -f "$work"/debs/docker.io_*.deb Version)"
        echo "containerd $(dpkg-deb -f "$work"/debs/containerd_*.deb Version)"
    } >"$staging/.complete"
    rm -rf "$BIN"
    mv "$staging" "$BIN"
    rm -rf "$work"
    log "unpacked $(tr '\n' ' ' <"$BIN/.complete")into $BIN"
}

server_version() { DOCKER_HOST="$1" docker version --format '{{.Server.Version}}' 2>/dev/null || true; }

wait_for() {
    local host="$1" logfile="$2"
    for _ in $(seq 1 60); do
        if [ -n "$(server_version "$host")" ]; then return 0; fi
        sleep 1
    done
    tail -20 "$logfile" >&2 || true
    die "the engine at $host did not start (log: $logfile)"
}

# Stops the engine of /var/run/docker.pid and waits until its process is gone (its API stops
# answering before it exits, and a new dockerd refuses to start while the pid file's process lives).
stop_default_engine() {
    local pid
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    [ -n "$pid" ] || return 0
    $SUDO kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do $SUDO kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
    die "the Docker engine (pid $pid) did not stop within 60 s"
}

command -v docker >/dev/null || apt_install docker.io # the client only is used from here on
command -v iptables >/dev/null || apt_install iptables

fetch_unstable_binaries

DEFAULT_HOST="unix:///var/run/docker.sock"
running=$(server_version "$DEFAULT_HOST")
if [ -n "$running" ] && [ "$(major "$running")" -ge "$MIN_DOCKER_MAJOR" ]; then
    log "Docker Engine $running already running: using it as it is"
else
    if [ -n "$running" ]; then
        [ "${CI:-}" = "true" ] || [ -n "${IRIS_REPLACE_ENGINE:-}" ] ||
            die "Docker Engine $running is running; the tests need ${MIN_DOCKER_MAJOR}+. Stop it, or rerun with IRIS_REPLACE_ENGINE=1 to let this script stop it and start ${MIN_DOCKER_MAJOR}.x"
        log "stopping Docker Engine $running (the tests need ${MIN_DOCKER_MAJOR}+)"
        stop_default_engine
    fi
    log "starting Docker Engine from $BIN"
    $SUDO env PATH="$BIN:$PATH" sh -c "nohup dockerd >/tmp/iris-dockerd.log 2>&1 &"
    wait_for "$DEFAULT_HOST" /tmp/iris-dockerd.log
fi

# The containerd image store engine: own socket, data root, exec root, and its own network
# namespace (`unshare --net`), so its bridge and iptables rules never touch the host's: a second
# dockerd on the host's namespace either fights over docker0 or, with --bridge=none, deletes it
# (dockerd removes the default bridge interface when bridging is disabled). Its tests build, save
# and load images, and start containers on its own bridge; they open no host ports.
CS_DIR="${IRIS_ENGINE_CS_DIR:-/run/iris-docker-cs}"
CS_DATA_ROOT="${IRIS_ENGINE_CS_DATA_ROOT:-/var/lib/$(basename "$CS_DIR")}"
CS_HOST="unix://$CS_DIR/docker.sock"
CS_MARKER="$CS_DIR/iris-engine.marker"
# Which engine this is: started by this script from these binaries (the cache), on this data root.
CS_KEY=$(printf '%s\n' "$(cd "$BIN" && pwd -P)" "$CS_DATA_ROOT" | sha256sum | cut -c1-16)

marker_field() { sed -n "s/^$1=//p" "$CS_MARKER" 2>/dev/null | head -1; }
# A live process that is a dockerd (a pid number alone may have been reused by anything).
is_dockerd() { [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = dockerd ]; }

# What is there, said in one line: version, pid and command line of the dockerd in the pid file.
describe_cs() {
    local version pid
    version=$(server_version "$CS_HOST")
    pid=$(cat "$CS_DIR/docker.pid" 2>/dev/null || true)
    printf 'Docker Engine %s answers on %s' "${version:-(no answer)}" "$CS_HOST"
    if is_dockerd "$pid"; then
        printf '; its pid file names dockerd pid %s: %s' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" | sed 's/ $//')"
    fi
}

refuse_cs() {
    die "$1: $(describe_cs). This script reuses only an engine it started itself (marker $CS_MARKER). \
If that engine is yours to stop: sudo kill \$(cat $CS_DIR/docker.pid), then rerun (or rerun with IRIS_REPLACE_ENGINE=1 to let this script stop it). \
Or leave it and run a second engine of your own elsewhere: IRIS_ENGINE_CS_DIR=/run/iris-docker-cs-\$USER bash .ci/engine.sh"
}

# Stops the dockerd named by $CS_DIR/docker.pid (only a dockerd) and waits until it is gone.
stop_cs_engine() {
    local pid
    pid=$(cat "$CS_DIR/docker.pid" 2>/dev/null || true)
    is_dockerd "$pid" || die "nothing to stop: $CS_DIR/docker.pid names no running dockerd; stop what answers on $CS_HOST yourself"
    log "stopping the engine at $CS_HOST (dockerd pid $pid)"
    $SUDO kill "$pid"
    for _ in $(seq 1 60); do is_dockerd "$pid" || return 0; sleep 1; done
    die "the engine at $CS_HOST (pid $pid) did not stop within 60 s"
}

cs_pid=$(cat "$CS_DIR/docker.pid" 2>/dev/null || true)
if [ -n "$(server_version "$CS_HOST")" ]; then
    why=""
    if [ ! -f "$CS_MARKER" ]; then
        why="an engine this script did not start (no marker) is running at $CS_DIR"
    elif [ "$(marker_field key)" != "$CS_KEY" ]; then
        why="the engine at $CS_DIR was started for another cache or data root ($(marker_field bin), $(marker_field data_root); started from $(marker_field checkout))"
    elif [ "$(marker_field pid)" != "$cs_pid" ] || ! is_dockerd "$cs_pid"; then
        why="the engine at $CS_DIR is not the dockerd this script started (marker pid $(marker_field pid), pid file ${cs_pid:-none})"
    fi
    if [ -n "$why" ]; then
        if [ "${CI:-}" = "true" ] || [ -n "${IRIS_REPLACE_ENGINE:-}" ]; then
            log "$why: $(describe_cs); replacing it"
            stop_cs_engine
        else
            refuse_cs "$why"
        fi
    else
        log "reusing the containerd image store engine this script started at $CS_HOST (dockerd pid $cs_pid, since $(marker_field started), from $(marker_field checkout))"
    fi
elif is_dockerd "$cs_pid"; then
    # Started but not answering (still starting, or hung): starting another would fail on its pid file.
    refuse_cs "a dockerd (pid $cs_pid) holds $CS_DIR/docker.pid but does not answer"
fi
if [ -z "$(server_version "$CS_HOST")" ]; then
    log "starting a second engine with the containerd image store ($CS_HOST, data root $CS_DATA_ROOT, own network namespace)"
    $SUDO mkdir -p "$CS_DIR"
    $SUDO rm -f "$CS_MARKER"
    printf '{ "features": { "containerd-snapshotter": true } }\n' | $SUDO tee "$CS_DIR/daemon.json" >/dev/null
    $SUDO env PATH="$BIN:$PATH" sh -c "nohup unshare --net sh -c 'ip link set lo up; exec dockerd \
        --config-file $CS_DIR/daemon.json -H $CS_HOST --data-root $CS_DATA_ROOT \
        --exec-root $CS_DIR/exec --pidfile $CS_DIR/docker.pid' >/tmp/iris-dockerd-cs.log 2>&1 &"
    wait_for "$CS_HOST" /tmp/iris-dockerd-cs.log
    cs_pid=$(cat "$CS_DIR/docker.pid" 2>/dev/null || true)
    is_dockerd "$cs_pid" || die "the engine at $CS_HOST answers, but $CS_DIR/docker.pid names no dockerd (${cs_pid:-empty}); see /tmp/iris-dockerd-cs.log"
    # unshare and the inner sh exec dockerd, so the pid file's pid is the process started above.
    printf '%s\n' "pid=$cs_pid" "key=$CS_KEY" "bin=$BIN" "data_root=$CS_DATA_ROOT" \
        "checkout=$(cd "$(dirname "$0")/.." && pwd -P)" "started=$(date -u +%Y-%m-%dT%H:%M:%SZ)" |
        $SUDO tee "$CS_MARKER" >/dev/null
    log "started dockerd pid $cs_pid; marker $CS_MARKER"
fi

# The default engine's bridge must exist, or no container on it can start ("adding interface ...
# to bridge docker0 failed"): an earlier second engine without its own namespace could delete it.
bridge=$(docker network inspect bridge --format '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null || true)
if [ -n "$bridge" ] && ! ip link show "$bridge" >/dev/null 2>&1; then
    [ "${CI:-}" = "true" ] || [ -n "${IRIS_REPLACE_ENGINE:-}" ] ||
        die "the default engine's bridge $bridge is gone, so containers on it cannot start; restart the engine (sudo systemctl restart docker), or rerun with IRIS_REPLACE_ENGINE=1"
    log "the default engine's bridge $bridge is gone: restarting that engine"
    stop_default_engine
    $SUDO env PATH="$BIN:$PATH" sh -c "nohup dockerd >/tmp/iris-dockerd.log 2>&1 &"
    wait_for "$DEFAULT_HOST" /tmp/iris-dockerd.log
fi

log "$(docker version --format 'Docker Engine {{.Server.Version}} (API {{.Server.APIVersion}})') on $DEFAULT_HOST; $(DOCKER_HOST=$CS_HOST docker info --format 'containerd image store engine {{.ServerVersion}}: storage driver {{.Driver}} {{range .DriverStatus}}{{index . 0}}={{index . 1}} {{end}}') on $CS_HOST"
log "fixture containerd: $("$BIN/containerd" --version)"

printf 'export IRIS_FIXTURE_BIN=%q\n' "$BIN"
printf 'export IRIS_TEST_DOCKER_CONTAINERD_STORE=%q\n' "$CS_HOST"
