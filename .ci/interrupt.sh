#!/usr/bin/env bash
# Ctrl-C at every step of a live `cargo xtask e2e` on kind, as a user's terminal sends it (SIGINT
# to the whole process group). For each step: exit 130; nothing left (the cluster's containers,
# the kind network when the run made it, the kubeconfig entry, the lock); the logs exported where
# the step had a cluster; a partial report where the load had started. Then `--reuse` twice (the
# second run uses the first one's cluster, both reports whole) and `--keep` (the cluster stays,
# the HPA as the manifest has it, the app answering on 127.0.0.1).
#
# Steps that last seconds (image load, deploy, report) are held at a pause point of the harness
# (XTASK_TEST_PAUSE) so that the signal lands inside them; kind create, the metrics-server wait
# and the load are interrupted while they really run.
#
#   bash .ci/interrupt.sh     (after `eval "$(bash .ci/kind-node.sh)"`; root, Docker)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=.ci/lib.sh
. .ci/lib.sh
require_node_env

name=iris-int
out=target/e2e-interrupt
work=$(mktemp -d)
FAIL_LOG=$work/run.log
kind_network_before=$(docker network ls -q --filter name='^kind$')
# `--reuse` keeps the app's images for the next run, by design; this script removes those its
# runs built (the main job's leftovers check counts them).
images_before=$(docker images -q --no-trunc | sort -u)
cleanup() {
    local ref
    for ref in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '^(iris-serve|iris-load-runner):' || true); do
        grep -q -x "$(docker image inspect --format '{{.Id}}' "$ref")" <<<"$images_before" ||
            docker rmi "$ref" >/dev/null 2>&1 || true
    done
    # Only if a check failed half-way: the harness deletes its own cluster otherwise.
    if [ -n "$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name")" ]; then
        echo "deleting the cluster a failed check left" >&2
        PATH="$(dirname "$IRIS_KIND"):$PATH" cargo xtask cluster down --cluster-name "$name" >&2 || true
    fi
    if [ -z "$kind_network_before" ]; then docker network rm kind >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cargo build -q -p xtask
xtask=target/debug/xtask
export PATH="$(dirname "$IRIS_KIND"):$PATH"

cat >"$work/smoke.yaml" <<'EOF'
scenarios:
  - name: smoke
    description: a short steady load; the HPA may not scale
    max_replicas: 1
    load:
      connections: 50
      duration: 30s
      max_requests_per_conn: 200
    observe_after: 5s
    gates:
      max_error_rate: 0.01
EOF
e2e_args=(e2e --cluster-name "$name" --node-image "$IRIS_NODE_IMAGE"
    --metrics-server-image "$IRIS_METRICS_SERVER_IMAGE" --out "$out" --scenario "$work/smoke.yaml")

# Runs e2e in a process group of its own; when a stderr line matches $1, waits $2 seconds and
# sends SIGINT to the group. Leaves the exit status in $status and the log in $work/run.log.
interrupt_when() {
    local ready=$1 delay=$2
    shift 2
    : >"$work/run.log"
    setsid "$xtask" "${e2e_args[@]}" "$@" 2>"$work/run.log" &
    local pid=$!
    local waited=0
    until grep -q -- "$ready" "$work/run.log"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$work/run.log"
            fail "the run ended before \"$ready\""
        fi
        sleep 0.2
        waited=$((waited + 1))
        [ "$waited" -lt 3000 ] || fail "no \"$ready\" within 600 s"
    done
    sleep "$delay"
    kill -INT -- "-$pid"
    status=0
    wait "$pid" || status=$?
}

# What every interruption must leave: nothing of the run.
nothing_left() {
    local what=$1
    [ "$status" -eq 130 ] || { tail -30 "$work/run.log"; fail "$what: exit $status, not 130"; }
    [ -z "$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name")" ] ||
        fail "$what: the cluster's containers are left"
    if [ -z "$kind_network_before" ] && docker network inspect kind >/dev/null 2>&1; then
        fail "$what: the kind network the run made is left"
    fi
    local kubeconfig=target/e2e/$name/kubeconfig
    if [ -f "$kubeconfig" ] && grep -q "kind-$name" "$kubeconfig"; then
        fail "$what: the kubeconfig entry is left"
    fi
    flock -n "target/e2e/$name.lock" true || fail "$what: the run's lock is still held"
    grep -q "error: SIGINT" "$work/run.log" || fail "$what: the run does not say it was interrupted"
}

logs_exported() {
    local what=$1 dir
    dir=$(sed -n 's/^logs of the failed run: //p' "$work/run.log" | tail -n1)
    [ -n "$dir" ] && [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] ||
        fail "$what: no logs exported (\"$dir\")"
    echo "$what: logs in $dir"
}

partial_report() {
    local what=$1 report
    report=$(sed -n 's/.*the partial report is in //p' "$work/run.log" | tail -n1)
    [ -n "$report" ] && grep -q "INTERRUPTED (partial)" "$report/report.md" ||
        fail "$what: no partial report (\"$report\")"
    echo "$what: partial report $report/report.md: $(sed -n 3p "$report/report.md")"
}

started=$SECONDS
log "Ctrl-C during kind create"
interrupt_when "==> \[2/10\] cluster create" 8
nothing_left "kind create"

log "Ctrl-C during the metrics-server wait"
interrupt_when "==> \[5/10\] metrics-server" 2
nothing_left "metrics-server wait"
logs_exported "metrics-server wait"

log "Ctrl-C during the image load"
XTASK_TEST_PAUSE=e2e-image-load interrupt_when "paused at e2e-image-load" 0
nothing_left "image load"
logs_exported "image load"

log "Ctrl-C during the deploy"
XTASK_TEST_PAUSE=e2e-deploy interrupt_when "paused at e2e-deploy" 0
nothing_left "deploy"
logs_exported "deploy"

log "Ctrl-C during the load"
# The load's own progress line ("[   5s/30s]  5514 req/s ..."), not any line with "req/s":
# a saved calibration prints "knee N req/s per pod" while the image is built.
interrupt_when 's/30s\] .*req/s' 10
nothing_left "load"
logs_exported "load"
partial_report "load"
grep -q "interrupted after" "$work/run.log" || grep -q "responses in" "$work/run.log" ||
    fail "load: the load's summary of what it measured is missing"

log "Ctrl-C during the report"
XTASK_TEST_PAUSE=e2e-report interrupt_when "paused at e2e-report" 0
nothing_left "report"
logs_exported "report"
partial_report "report"
echo "interruptions checked in $((SECONDS - started)) s"

log "--reuse twice: the second run uses the first one's cluster"
"$xtask" "${e2e_args[@]}" --reuse 2>&1 | tee "$work/reuse1.log" | grep -E "^==>|passed|FAILED" || true
grep -q "e2e passed" "$work/reuse1.log" || fail "the first --reuse run failed"
first_nodes=$(docker ps -q --no-trunc --filter "label=io.x-k8s.kind.cluster=$name" | sort)
[ -n "$first_nodes" ] || fail "--reuse did not leave the cluster"
"$xtask" "${e2e_args[@]}" --reuse --keep 2>&1 | tee "$work/reuse2.log" | grep -E "^==>|passed|FAILED|reus|left running" || true
grep -q "e2e passed" "$work/reuse2.log" || fail "the second --reuse run failed"
[ "$(docker ps -q --no-trunc --filter "label=io.x-k8s.kind.cluster=$name" | sort)" = "$first_nodes" ] ||
    fail "the second --reuse run did not use the same node containers"
grep -q "left running" "$work/reuse2.log" || fail "--keep does not say how to reach the cluster"
reports=$(grep -c "wrote .*report.md" "$work/reuse1.log" "$work/reuse2.log" | awk -F: '{ s += $2 } END { print s }')
[ "$reports" -eq 2 ] || fail "expected a report from each --reuse run, saw $reports"

log "--keep: the HPA as the manifest has it, the app answering on 127.0.0.1"
want=$(awk '/maxReplicas:/ { print $2; exit }' manifests/app/hpa.yaml)
got=$(docker exec "$name-control-plane" kubectl --kubeconfig /etc/kubernetes/admin.conf \
    get hpa -n iris-serve iris-serve -o jsonpath='{.spec.maxReplicas}')
[ "$got" = "$want" ] || fail "--keep left the HPA at maxReplicas $got, the manifest has $want"
python3 - <<'PY' || fail "the kept app does not answer"
import urllib.request
request = urllib.request.Request(
    "http://127.0.0.1:30080/predict",
    data=b'{"features": [5.1, 3.5, 1.4, 0.2]}',
    headers={"content-type": "application/json"},
)
print(urllib.request.urlopen(request, timeout=10).read().decode())
PY
"$xtask" cluster down --cluster-name "$name"
[ -z "$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name")" ] || fail "cluster down left containers"

log "interruptions, --reuse and --keep: every check passed ($((SECONDS - started)) s)"
