#!/usr/bin/env bash
# `cargo xtask e2e --offline --bundle DIR`, for real: the whole job from a bundle, on a machine
# that has none of the images and no network.
#   1. `cargo xtask bundle` saves the node image and the metrics-server image built here (from the
#      default engine) into a bundle. Neither is pinned by this repository (they are local
#      builds), so the bundle records each as name:tag@<digest its saved tar names>, and the run
#      trusts them because its command line pins them so (--node-image, --metrics-server-image):
#      the test-only stand-in for the repository's pins of kindest/node and metrics-server.
#   2. The run happens on the second engine of .ci/engine.sh (Docker's containerd image store,
#      which a bundle needs: the classic store keeps no digest on `docker load`). Both images are
#      removed from that engine first, so they can only come from the bundle.
#   3. The harness runs inside that engine's network namespace (`nsenter --net`), which has a
#      loopback and the engine's own bridges and no route out: nothing can be fetched, and the
#      host's 127.0.0.1 is not reachable either. kind comes from PATH, cargo is offline.
# Checks: the run passes, the bundle's images were loaded and verified, its report is written,
# and that engine has no container, network or volume it did not have before.
#
#   bash .ci/offline-bundle.sh    (after `eval "$(bash .ci/engine.sh)"` and `eval "$(bash .ci/kind-node.sh)"`; root)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=.ci/lib.sh
. .ci/lib.sh
require_node_env
: "${IRIS_TEST_DOCKER_CONTAINERD_STORE:?run after eval \"\$(bash .ci/engine.sh)\"}"
cs_host=$IRIS_TEST_DOCKER_CONTAINERD_STORE
cs_pid=$(cat "${IRIS_ENGINE_CS_DIR:-/run/iris-docker-cs}/docker.pid")
cs() { DOCKER_HOST=$cs_host docker "$@"; }
in_netns() { nsenter --target "$cs_pid" --net -- "$@"; }

work=target/offline-bundle
out=target/e2e-offline
rm -rf "$work"
mkdir -p "$work"
loaded=()
cleanup() {
    # The images the bundle loaded into the second engine (the engine is as it was).
    if [ "${#loaded[@]}" -gt 0 ]; then cs rmi "${loaded[@]}" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

log "cargo xtask bundle --out $work/bundle --without-kind --image $IRIS_NODE_IMAGE --image $IRIS_METRICS_SERVER_IMAGE"
started=$SECONDS
cargo xtask bundle --out "$work/bundle" --without-kind \
    --image "$IRIS_NODE_IMAGE" --image "$IRIS_METRICS_SERVER_IMAGE"
echo "bundle written in $((SECONDS - started)) s: $(du -sh "$work/bundle" | cut -f1)"
reference() {
    python3 -c 'import json, sys
for i in json.load(open(sys.argv[1]))["images"]:
    if i["reference"].split("@")[0] == sys.argv[2]:
        print(i["reference"])' "$work/bundle/bundle.json" "$1"
}
node_ref=$(reference "$IRIS_NODE_IMAGE")
metrics_ref=$(reference "$IRIS_METRICS_SERVER_IMAGE")
[[ $node_ref == "$IRIS_NODE_IMAGE"@sha256:* && $metrics_ref == "$IRIS_METRICS_SERVER_IMAGE"@sha256:* ]] ||
    fail "the bundle does not record both images by digest: ${node_ref:-none} ${metrics_ref:-none}"
loaded=("$IRIS_NODE_IMAGE" "$IRIS_METRICS_SERVER_IMAGE")

log "the machine of the run: $(cs version --format 'Docker Engine {{.Server.Version}}') with the containerd image store, none of the images, no network"
for image in "$IRIS_NODE_IMAGE" "$IRIS_METRICS_SERVER_IMAGE"; do
    cs rmi "$image" >/dev/null 2>&1 || true
    if cs image inspect "$image" >/dev/null 2>&1; then fail "$image is still in the engine of the run"; fi
done
if in_netns ip route | grep -q '^default'; then
    fail "the engine's network namespace has a route out: $(in_netns ip route | grep '^default')"
fi
echo "its network namespace: $(in_netns ip -brief link | awk '{ print $1 }' | paste -sd' '), no default route"
cs_snapshot() {
    {
        cs ps -aq --no-trunc | sed 's/^/container /'
        cs network ls -q --no-trunc | sed 's/^/network /'
        cs volume ls -q | sed 's/^/volume /'
    } | sort -u
}
before=$(cs_snapshot)

status=0
log "cargo xtask e2e --offline --bundle $work/bundle --node-image $node_ref --metrics-server-image $metrics_ref --scenario autoscale"
in_netns env DOCKER_HOST="$cs_host" CARGO_NET_OFFLINE=true PATH="$(dirname "$IRIS_KIND"):$PATH" \
    cargo xtask e2e --offline --bundle "$work/bundle" \
    --node-image "$node_ref" --metrics-server-image "$metrics_ref" \
    --scenario autoscale --out "$out" 2>&1 | tee "$work/run.log" || status=$?
[ "$status" -eq 0 ] || fail "the offline run failed (exit $status)"
for ref in "$node_ref" "$metrics_ref"; do
    grep -q "loaded $ref" "$work/run.log" || fail "the run did not load $ref from the bundle"
done
report=$(ls -td "$out"/*/ | head -n1)report.md
[ -s "$report" ] || fail "no report at $report"
after=$(cs_snapshot)
left=$(comm -13 <(echo "$before") <(echo "$after") || true)
[ -z "$left" ] || fail "the offline run left these in the engine: $left"
echo "the engine of the run has no container, network or volume it did not have before"
awk '/^\|/ { shown = 1; print; next } shown { exit }' "$report"
log "offline bundle: every check passed"
