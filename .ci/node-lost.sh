#!/usr/bin/env bash
# A node lost under load, live: `cargo xtask e2e` runs an autoscaling scenario and, once the HPA
# has scaled out (3 pods serving, or 90 s into the load), the kind worker holding most of the app's pods is
# killed (its container's restart policy cleared first, so Docker does not bring it back), as a
# failing machine would go. Checks:
#   - the run goes on to its verdict (the scenario has only the scale-up gate, so exit 0);
#   - the report names the lost node and its pods, and the failed requests by class;
#   - the timeline marks the loss (its legend says "node lost");
#   - teardown leaves no container of the cluster, the dead node's included.
#
#   bash .ci/node-lost.sh    (after `eval "$(bash .ci/kind-node.sh)"`; root, Docker)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=.ci/lib.sh
. .ci/lib.sh
require_node_env

name=iris-serve
out=target/e2e-node-lost
work=$(mktemp -d)
run_pid=""
cleanup() {
    if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
        kill -INT "$run_pid" 2>/dev/null || true
        wait "$run_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/node-lost.yaml" <<'EOF'
scenarios:
  - name: node-lost
    description: The autoscale scenario while a worker node's container is killed once 3 pods serve
    max_replicas: 3
    load:
      connections: 1000
      duration: 150s
      max_requests_per_conn: 200
    gates:
      expect_scale_up_within_s: 120
EOF

log "cargo xtask e2e --scenario node-lost (a worker killed once 3 pods serve)"
: >"$work/run.log"
PATH="$(dirname "$IRIS_KIND"):$PATH" cargo xtask e2e \
    --node-image "$IRIS_NODE_IMAGE" --metrics-server-image "$IRIS_METRICS_SERVER_IMAGE" \
    --scenario "$work/node-lost.yaml" --out "$out" >"$work/run.log" 2>&1 &
run_pid=$!
tail -f "$work/run.log" --pid "$run_pid" &
# Once the scale-out serves (a progress line with 3 pods), or at 90 s whatever it is.
until grep -q -E 'pods 3$|\[ *90s/150s\]' "$work/run.log"; do
    kill -0 "$run_pid" 2>/dev/null || fail "the run ended before the node could be killed"
    sleep 1
done
echo "at: $(grep -E '^ *\[ *[0-9]+s/150s\]' "$work/run.log" | tail -n1)"
# The worker with most of the app's pods, as the API server places them.
nodes=$(docker exec "$name-control-plane" kubectl --kubeconfig /etc/kubernetes/admin.conf \
    get pods -n iris-serve -l app.kubernetes.io/name=iris-serve \
    -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}')
victim=$(grep -v control-plane <<<"$nodes" | sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }')
[ -n "$victim" ] || fail "no app pod on a worker to lose (pods on: $(tr '\n' ' ' <<<"$nodes"))"
echo "killing $victim, which holds $(grep -c -x "$victim" <<<"$nodes") of the $(wc -l <<<"$nodes") app pods"
docker update --restart=no "$victim" >/dev/null
docker kill "$victim" >/dev/null
status=0
wait "$run_pid" || status=$?
run_pid=""
[ "$status" -eq 0 ] || fail "the run did not reach its verdict (exit $status)"

dir=$(ls -td "$out"/*/ | head -n1)
report=${dir}report.md
grep -q "Node lost:\*\* \`$victim\`" "$report" || fail "$report does not name the lost node $victim"
grep "Node lost:" "$report"
lost_pods=$(grep "Node lost:\*\* \`$victim\`" "$report" | sed 's/.*pods on it: //')
[ "$lost_pods" != "none." ] || fail "$report names no pod on $victim"
errors=$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print(sum(r["scenarios"][0]["load"]["totals"]["errors"].values()))' "${dir}report.json")
if [ "$errors" -gt 0 ]; then
    grep -q "Errors by class:" "$report" || fail "$report does not count the $errors failed requests by class"
    grep "Errors by class:" "$report"
fi
grep -q "node lost" "${dir}timeline.svg" || fail "the timeline does not mark the lost node"
left=$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name")
[ -z "$left" ] || fail "the cluster's containers are left: $left"
log "node lost: every check passed ($victim lost; errors $errors)"
