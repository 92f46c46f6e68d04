#!/usr/bin/env bash
# The product's main job, live: `cargo xtask e2e` on a real 3-node kind cluster (1 control plane,
# 2 workers) made from the node image .ci/kind-node.sh builds here, every scenario of
# xtask/scenarios.yaml, gates on, with --calibrate and --monitoring; then the autoscale scenario again with the load sent from runner
# pods inside the cluster (`--load-from cluster --load-pods 2`); then the seeds' own stack, the
# FastAPI example of manifests/examples/fastapi-iris (`--app`, its image built offline by
# .ci/fastapi-image.sh, `--image`), and a side-by-side table of it and the Iris server's run
# (`cargo xtask report --beside`); then .ci/offline-bundle.sh (the job from a bundle, on an
# engine without the images or a network); then .ci/node-lost.sh (a worker killed under load);
# then .ci/existing-cluster.sh (the
# same job against a kind cluster made with plain kind) and .ci/interrupt.sh (Ctrl-C at every
# step, --reuse, --keep). Fails when a run fails, and when the runs leave anything
# behind: a container, network or volume, or an image beyond those that were there before it
# (the cached node and component images).
#
#   bash .ci/live-e2e.sh [extra `cargo xtask e2e` flags]
#
# Needs root (sysctl, Docker) and the engine of .ci/engine.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

log "kind node image, built here from registry packages (cached by versions)"
node_started=$SECONDS
node_env=$(bash .ci/kind-node.sh)
eval "$node_env"
echo "node image ready in $((SECONDS - node_started)) s: $IRIS_NODE_IMAGE"

# Multi-node kind needs more inotify watches and instances than distributions give (doctor
# checks them); raised only when lower.
for setting in fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512; do
    key=${setting%=*} want=${setting#*=}
    if [ "$(sysctl -n "$key")" -lt "$want" ]; then sysctl -qw "$setting"; fi
done

# The FastAPI example's image (cached by its inputs): built before the snapshot, like the node
# image, so the leftovers check counts only what the runs make.
log "the FastAPI example's image, built offline (.ci/fastapi-image.sh)"
fastapi_env=$(bash .ci/fastapi-image.sh)
eval "$fastapi_env"

snapshot() {
    {
        docker ps -aq --no-trunc | sed 's/^/container /'
        docker network ls -q --no-trunc | sed 's/^/network /'
        docker volume ls -q | sed 's/^/volume /'
        docker images -aq --no-trunc | sed 's/^/image /'
    } | sort -u
}
before=$(snapshot)

out=target/e2e
status=0
e2e() {
    log "cargo xtask e2e --node-image $IRIS_NODE_IMAGE --metrics-server-image $IRIS_METRICS_SERVER_IMAGE $*"
    PATH="$(dirname "$IRIS_KIND"):$PATH" cargo xtask e2e \
        --node-image "$IRIS_NODE_IMAGE" \
        --metrics-server-image "$IRIS_METRICS_SERVER_IMAGE" \
        --out "$out" "$@" || status=$?
}
# The main job as users run it: every scenario, the load from this machine through the NodePort;
# with --calibrate (one pod measured in a container first: the report's predicted-against-observed
# section) and --monitoring (this cluster has no Prometheus Operator: said, and the run goes on).
main_log=target/e2e-main.log
mkdir -p target
e2e --calibrate --monitoring "$@" > >(tee "$main_log") 2>&1
wait "$!" || true
main_report=$(ls -td "$out"/*/report.json 2>/dev/null | head -n1 || true)
check() {
    if ! grep -q -- "$2" "$3"; then
        echo "FAILED: $1 ($3 has no \"$2\")" >&2
        status=1
    fi
}
check "--monitoring says the PodMonitor CRD is absent" "no podmonitors.monitoring.coreos.com CRD" "$main_log"
check "--monitoring goes on without it" "no PodMonitor applied" "$main_log"
if [ -n "$main_report" ]; then
    check "--calibrate fills the predicted-against-observed section" "### Predicted against observed" "${main_report%.json}.md"
fi
# The seeds' own stack as the app under test: their manifests, their image, their request.
fastapi_out=target/e2e-fastapi
log "cargo xtask e2e --app manifests/examples/fastapi-iris --image $IRIS_FASTAPI_IMAGE --server-metrics ..."
PATH="$(dirname "$IRIS_KIND"):$PATH" cargo xtask e2e \
    --node-image "$IRIS_NODE_IMAGE" \
    --metrics-server-image "$IRIS_METRICS_SERVER_IMAGE" \
    --out "$fastapi_out" \
    --app manifests/examples/fastapi-iris --image "$IRIS_FASTAPI_IMAGE" \
    --server-metrics http_request_duration_seconds,handler=/predict \
    --scenario manifests/examples/fastapi-iris/scenarios.yaml || status=$?
fastapi_report=$(ls -td "$fastapi_out"/*/report.json 2>/dev/null | head -n1 || true)
# One FastAPI pod's capacity without a cluster, as its Deployment runs it (port, user, env,
# /tmp, limits) and sent its scenario's request; the prediction for its scenarios beside it.
log "cargo xtask calibrate --app manifests/examples/fastapi-iris --image $IRIS_FASTAPI_IMAGE"
cargo xtask calibrate --app manifests/examples/fastapi-iris --image "$IRIS_FASTAPI_IMAGE" \
    --scenario manifests/examples/fastapi-iris/scenarios.yaml --out target/calibrate-fastapi \
    --start-rate 40 --growth 1.5 --connections 64 --max-p99-ms 500 || status=$?
if [ -n "$main_report" ] && [ -n "$fastapi_report" ]; then
    log "the Iris server and the FastAPI service, side by side"
    cargo xtask report "$main_report" --beside "$fastapi_report" --out target/e2e-comparison \
        >/dev/null || status=$?
    cat target/e2e-comparison/comparison.md
else
    echo "no side-by-side table: a run wrote no report.json" >&2
    status=1
fi
# Then the load from inside the cluster: two runner pods spread over the workers, merged exactly.
e2e --load-from cluster --load-pods 2 --scenario autoscale "$@"
# Its merge, checked from outside: the runners' own histograms, as they sent them, added up by the
# HdrHistogram project's Python port (pinned by hash; a venv cached by the requirements' hash).
log "the runners' merge against Python's HdrHistogram (.ci/runner-merge.py)"
runner_report=$(ls -td "$out"/*/report.json 2>/dev/null | head -n1 || true)
requirements=.ci/runner-merge.requirements.txt
venv="${IRIS_TOOLS_CACHE:-$HOME/.cache/iris-serve/tools}/hdrh-$(sha256sum "$requirements" | cut -c1-12)"
hdrh_venv() {
    [ ! -x "$venv/bin/python" ] || return 0
    rm -rf "$venv.part"
    python3 -m venv "$venv.part" &&
        "$venv.part/bin/pip" install -q --disable-pip-version-check --no-deps --require-hashes \
            --only-binary :all: -r "$requirements" &&
        rm -rf "$venv" && mv "$venv.part" "$venv"
}
# A failure here fails the run at its end; the steps after it still run and clean up.
if ! hdrh_venv; then
    echo "FAILED: could not install $requirements into $venv" >&2
    status=1
elif [ -z "$runner_report" ]; then
    echo "FAILED: the runner-pod run wrote no report.json" >&2
    status=1
else
    "$venv/bin/python" .ci/runner-merge.py "$runner_report" || status=1
fi
# Then the whole job offline from a bundle, on an engine without the images and without network.
log "cargo xtask e2e --offline --bundle (.ci/offline-bundle.sh)"
bash .ci/offline-bundle.sh || status=$?
# Then a worker node killed under load (.ci/node-lost.sh).
log "a node lost under load (.ci/node-lost.sh)"
bash .ci/node-lost.sh || status=$?
# Then against a cluster the harness did not create, as a platform team runs it.
log "cargo xtask e2e against an existing cluster (.ci/existing-cluster.sh)"
bash .ci/existing-cluster.sh || status=$?
# Then Ctrl-C at every step, --reuse twice and --keep.
log "Ctrl-C at every step, --reuse and --keep (.ci/interrupt.sh)"
bash .ci/interrupt.sh || status=$?

log "what the run left behind"
after=$(snapshot)
left=$(comm -13 <(echo "$before") <(echo "$after") || true)
if [ -n "$left" ]; then
    echo "the run left these behind:"
    while read -r what id; do
        case $what in
        container) echo "  container $(docker inspect --format '{{.Name}} {{.Config.Image}}' "$id" 2>/dev/null || echo "$id")" ;;
        network) echo "  network $(docker network inspect --format '{{.Name}}' "$id" 2>/dev/null || echo "$id")" ;;
        image) echo "  image $id $(docker image inspect --format '{{join .RepoTags ","}}' "$id" 2>/dev/null)" ;;
        *) echo "  $what $id" ;;
        esac
    done <<<"$left"
    [ "$status" -ne 0 ] || status=1
else
    echo "nothing: no container, network, volume or image that was not there before the run"
fi

for report in $(ls -tdr "$out"/*/report.md 2>/dev/null | tail -n2); do
    log "a run's report: $report"
    # The summary table: the report's first table.
    awk '/^\|/ { shown = 1; print; next } shown { exit }' "$report"
done
exit "$status"
