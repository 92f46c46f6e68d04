#!/usr/bin/env bash
# Builds, offline from registry packages, the image of the second app under test,
# manifests/examples/fastapi-iris: the image its Dockerfile describes (FROM python:3.11-slim),
# which cannot be built here because Docker Hub is not reachable.
#
#   eval "$(bash .ci/fastapi-image.sh)"   # exports IRIS_FASTAPI_IMAGE
#
# Logs go to stderr; stdout is only the `export` line.
#
# The same app on the same Python minor: Debian bookworm's python3 (3.11, as python:3.11-slim's
# 3.11) from a `debootstrap --variant=minbase` root file system, a venv in /opt/venv with
# requirements.txt installed from PyPI wheels (downloaded by the host's pip for cp311 and
# manylinux, installed in the root with no index), the app in /app; then `docker import` with the
# Dockerfile's USER, WORKDIR, ENV and CMD.
#
# Tagged fastapi-iris:<key>, the key a hash of this script, requirements.txt, app/ and the suite:
# a second run with the same key only checks that the image is there. The root file system is
# cached by suite, the wheels by file name. Set IRIS_FASTAPI_CACHE to move the cache (default
# ~/.cache/iris-serve/fastapi-image).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

DEBIAN_SUITE=bookworm   # python3 3.11.2: the Dockerfile's python:3.11-slim is 3.11 too
APP_DIR=manifests/examples/fastapi-iris
CACHE="${IRIS_FASTAPI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/iris-serve/fastapi-image}"
VERSIONS_LABEL=iris-serve.fastapi-iris.versions

[ -f "$APP_DIR/requirements.txt" ] && [ -f "$APP_DIR/app/main.py" ] || die "no $APP_DIR/requirements.txt or app/main.py"

key=$( {
    cat .ci/fastapi-image.sh "$APP_DIR/requirements.txt"
    (cd "$APP_DIR" && find app -type f ! -name '*.pyc' | LC_ALL=C sort | xargs sha256sum)
    echo "$DEBIAN_SUITE"
} | sha256sum | cut -c1-12)
REF="fastapi-iris:$key"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

print_versions() {
    log "image $REF (cache key $key), standing for $APP_DIR/Dockerfile (python:3.11-slim)"
    printf '    %s\n' "$@" >&2
    log "base Debian $DEBIAN_SUITE (debootstrap --variant=minbase), python3 from Debian, packages from PyPI wheels"
}

if have_image "$REF"; then
    versions=$(docker image inspect --format "{{index .Config.Labels \"$VERSIONS_LABEL\"}}" "$REF")
    IFS=';' read -r -a lines <<<"$versions"
    print_versions "${lines[@]}"
    log "cached: $REF"
    printf 'export IRIS_FASTAPI_IMAGE=%q\n' "$REF"
    exit 0
fi
started=$(date +%s)
mkdir -p "$CACHE/wheels"

# ---- The Debian root file system with python3 and its venv module, cached by suite ----------

rootfs_tar="$CACHE/rootfs-$DEBIAN_SUITE-python3.tar"
if [ ! -f "$rootfs_tar" ]; then
    command -v debootstrap >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2; }
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    root=$(mktemp -d)
    log "debootstrap $DEBIAN_SUITE into $root"
    debootstrap --variant=minbase --include=python3,python3-venv \
        "$DEBIAN_SUITE" "$root" "${mirror:-http://deb.debian.org/debian}" >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$rootfs_tar.partial" .
    rm -rf "$root"
    mv "$rootfs_tar.partial" "$rootfs_tar"
fi

# ---- The wheels: downloaded by the host's pip for the root's Python and glibc ------------------

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
tar -C "$root" -xf "$rootfs_tar"
# Commands in the root see none of this host's environment (its PIP_* and PYTHON* settings).
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
py_version=$(in_root python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
py_minor=${py_version%.*}
glibc=$(in_root ldd --version | awk 'NR == 1 {print $NF}')
log "pip download for CPython $py_version, manylinux glibc $glibc"
# pip takes a manylinux platform as that one only: every glibc the root's can run is named.
platforms=()
for minor in $(seq "${glibc#*.}" -1 17); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --implementation cp --python-version "$py_minor" --abi "cp${py_minor/./}" \
    "${platforms[@]}" --platform manylinux2014_x86_64 \
    -d "$CACHE/wheels" -r "$APP_DIR/requirements.txt" >&2

# ---- The venv and the app -----------------------------------------------------------------------

mkdir -p "$root/tmp/wheels" "$root/app"
cp "$APP_DIR/requirements.txt" "$root/tmp/requirements.txt"
for w in $(python3 - "$APP_DIR/requirements.txt" "$CACHE/wheels" <<'EOF'
import os, re, sys
# The wheel of each pinned name==version, by pip's normalized file names.
pins = {}
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        pins[re.sub(r"[-_.]+", "_", name).lower()] = version
for f in sorted(os.listdir(sys.argv[2])):
    name, version = f.split("-")[:2]
    if pins.get(re.sub(r"[-_.]+", "_", name).lower()) == version:
        print(f)
EOF
); do cp "$CACHE/wheels/$w" "$root/tmp/wheels/"; done
cp -r "$APP_DIR"/app/. "$root/app/"
find "$root/app" -name '__pycache__' -prune -exec rm -rf {} +
chmod -R a+rX,go-w "$root/app"

log "venv /opt/venv: pip install -r requirements.txt (no index)"
in_root python3 -m venv /opt/venv
# --no-deps: every dependency is pinned in requirements.txt; `pip check` proves none is missing.
in_root /opt/venv/bin/pip install -q --disable-pip-version-check --no-index --no-deps \
    --find-links /tmp/wheels -r /tmp/requirements.txt >&2
in_root /opt/venv/bin/pip check >&2
# The app's imports work and the model trains, in the root it will run in.
in_root /bin/sh -c 'cd /app && OMP_NUM_THREADS=1 /opt/venv/bin/python -c "import main"' >&2

mapfile -t versions < <(in_root /opt/venv/bin/python - <<'EOF'
import sys
from importlib.metadata import version
print("Python %d.%d.%d (Debian python3)" % sys.version_info[:3])
for name in ("fastapi", "uvicorn", "scikit-learn", "prometheus_client", "starlette", "pydantic", "numpy", "scipy"):
    print(f"{name} {version(name)}")
EOF
)

# What the image does not need: the wheels, pip's and apt's caches, documentation.
rm -rf "$root"/tmp/* "$root"/root/.cache "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/*
chmod 1777 "$root/tmp"

# The Dockerfile's USER, WORKDIR, ENV and CMD. OMP/OpenBLAS threads: one, as a pod with a 250m CPU
# limit has no use for a pool per core.
tar -C "$root" -c . | docker import \
    --change 'USER 65532:65532' \
    --change 'WORKDIR /app' \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PROMETHEUS_DISABLE_CREATED_SERIES=True' \
    --change 'EXPOSE 8000' \
    --change "LABEL org.opencontainers.image.description=\"built by iris-serve's .ci/fastapi-image.sh ($key)\"" \
    --change "LABEL $VERSIONS_LABEL=\"$(IFS=';'; echo "${versions[*]}")\"" \
    --change 'CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "1", "--no-access-log"]' \
    - "$REF" >/dev/null

print_versions "${versions[@]}"
log "built $REF in $(($(date +%s) - started)) s ($(docker image inspect --format '{{.Size}}' "$REF" | awk '{printf "%.0f MB", $1 / 1e6}'))"
printf 'export IRIS_FASTAPI_IMAGE=%q\n' "$REF"
