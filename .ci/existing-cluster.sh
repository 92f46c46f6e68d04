#!/usr/bin/env bash
# `cargo xtask e2e` against a cluster it did not create, live, as a platform team runs it:
# a 3-node kind cluster made with plain kind (.ci/platform-cluster.yaml) on the node image of
# .ci/kind-node.sh, with metrics-server installed the way its README says (kubectl apply), and
# the app's images preloaded into the nodes the way a registry would serve them. Checks:
#   1. a namespace that exists and is not the run's is refused, naming --use-existing-namespace;
#   2. --use-existing-namespace runs in it, the load from this machine with --url (loopback,
#      through the one NodePort the API server can allocate), and leaves the namespace;
#   3. the default: the run creates and owns the namespace, the load comes from 2 runner pods
#      inside the cluster, the HPA scales, and at the end the namespace is gone and every object
#      outside it is as before (kind, namespace, name, uid and content, volatile fields aside);
#      the kubeconfig file is byte for byte as before;
#   4. a stopped API server is named in the error (server, context, what to check).
# The cluster has the Prometheus Operator's PodMonitor CRD (from its Go module, hash pinned below),
# so run 3 uses --monitoring: its PodMonitor must pass the real API server's validation.
# The cluster is deleted at the end, whatever happened.
#
#   bash .ci/existing-cluster.sh     (after `eval "$(bash .ci/kind-node.sh)"`; root, Docker)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=.ci/lib.sh
. .ci/lib.sh
require_node_env

name=iris-platform
context=kind-$name
control_plane=$name-control-plane
work=$(mktemp -d)
kubeconfig=$work/kubeconfig
out=target/e2e-existing
built_here=()
# kind makes its Docker network on first use and never removes it: removed at the end if this
# script's cluster made it.
kind_network_before=$(docker network ls -q --filter name='^kind$')
cleanup() {
    "$IRIS_KIND" delete cluster --name "$name" --kubeconfig "$kubeconfig" >/dev/null 2>&1 || true
    if [ -z "$kind_network_before" ]; then docker network rm kind >/dev/null 2>&1 || true; fi
    if [ "${#built_here[@]}" -gt 0 ]; then docker rmi "${built_here[@]}" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# kubectl as the platform team runs it: the one in the control-plane node, as cluster admin.
kubectl() { docker exec -i "$control_plane" kubectl --kubeconfig /etc/kubernetes/admin.conf "$@"; }

log "the platform team's cluster: kind create cluster --name $name (plain kind, not this harness)"
started=$SECONDS
"$IRIS_KIND" create cluster --name "$name" --image "$IRIS_NODE_IMAGE" \
    --config .ci/platform-cluster.yaml --kubeconfig "$kubeconfig" --wait 180s
"$IRIS_KIND" load docker-image --name "$name" "$IRIS_METRICS_SERVER_IMAGE"
# The repository's metrics-server manifest with the locally built image, as a platform team
# installs it; the harness only reads it.
sed "s#image: registry.k8s.io/metrics-server/metrics-server:.*#image: $IRIS_METRICS_SERVER_IMAGE#" \
    manifests/metrics-server/metrics-server.yaml | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=240s
# The PodMonitor CRD as the Prometheus Operator ships it, from its Go module (the module proxy
# serves it; go checks it against the checksum database, and its hash against this pin).
PROMETHEUS_OPERATOR_VERSION=v0.94.1
PROMETHEUS_OPERATOR_H1="h1:QEIb2wenPH+SdMN1xMf8l4Pmj00YYXXI6HlbLlQWkww="
operator=$(cd "$work" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
    python3 -c 'import json, sys
d = json.load(sys.stdin)
if d.get("Sum") != sys.argv[1]:
    sys.exit("prometheus-operator module: %s, pinned %s" % (d.get("Error") or d.get("Sum"), sys.argv[1]))
print(d["Dir"])' "$PROMETHEUS_OPERATOR_H1")
kubectl apply --server-side -f - >/dev/null \
    <"$operator/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"
kubectl wait --for=condition=Established crd/podmonitors.monitoring.coreos.com --timeout=60s
echo "PodMonitor CRD of prometheus-operator $PROMETHEUS_OPERATOR_VERSION applied"
echo "cluster ready in $((SECONDS - started)) s"

log "the app's images, preloaded into the nodes (standing for a registry the cluster pulls from)"
images_before=$(docker images -q --no-trunc | sort -u)
built=$(cargo xtask image build)
echo "$built"
server=$(awk 'NR == 1 { print $1 }' <<<"$built")
runner=$(awk 'NR == 2 { print $1 }' <<<"$built")
[[ $server == iris-serve:* && $runner == iris-load-runner:* ]] ||
    fail "unexpected image names from cargo xtask image build: $server $runner"
for ref in "$server" "$runner"; do
    # Removed at the end if this script built it (the main run removes what it built).
    grep -q -x "$(docker image inspect --format '{{.Id}}' "$ref")" <<<"$images_before" || built_here+=("$ref")
done
"$IRIS_KIND" load docker-image --name "$name" "$server" "$runner"

# Every object outside the run's namespace: kind, namespace/name, uid and a hash of its content
# without what the cluster changes by itself (status, resourceVersion, managedFields, lease
# renewals, the node heartbeat annotations). Events are not objects anyone owns, and NodeMetrics
# and PodMetrics are readings, not objects (the first live run saw all of them change): left out.
objects() {
    local kinds
    kinds=$(kubectl api-resources --verbs=list -o name |
        grep -v -x -e events -e events.events.k8s.io -e nodes.metrics.k8s.io -e pods.metrics.k8s.io |
        paste -sd, -)
    kubectl get "$kinds" --all-namespaces -o json 2>/dev/null | python3 -c '
import hashlib, json, sys
for o in json.load(sys.stdin)["items"]:
    m = o.get("metadata", {})
    if m.get("namespace") == "iris-serve" or (o["kind"] == "Namespace" and m["name"] == "iris-serve"):
        continue
    o.pop("status", None)
    for k in ("resourceVersion", "managedFields", "generation"):
        m.pop(k, None)
    if o["kind"] == "Lease":
        for k in ("renewTime", "acquireTime", "leaseTransitions", "holderIdentity"):
            o.get("spec", {}).pop(k, None)
    if o["kind"] == "Node":
        for k in list(m.get("annotations", {})):
            if k.startswith("flannel.alpha.coreos.com/") or k == "node.alpha.kubernetes.io/ttl":
                m["annotations"].pop(k)
    if o["kind"] == "EndpointSlice":
        o.pop("endpoints", None)
    h = hashlib.sha256(json.dumps(o, sort_keys=True).encode()).hexdigest()[:16]
    print(o["kind"], (m.get("namespace") or "-") + "/" + m["name"], m.get("uid"), h)
' | sort
}

e2e() {
    cargo xtask e2e --kubeconfig "$kubeconfig" --context "$context" --image "$server" \
        --load-image "$runner" --out "$out" "$@"
}

# A short scenario for the runs that check the namespace handling and the host's --url.
cat >"$work/smoke.yaml" <<'EOF'
scenarios:
  - name: smoke
    description: a short steady load; the HPA may not scale
    max_replicas: 1
    load:
      connections: 50
      duration: 20s
      max_requests_per_conn: 200
    observe_after: 5s
    gates:
      max_error_rate: 0.01
EOF

kubeconfig_before=$(sha256sum <"$kubeconfig")
objects >"$work/before"
echo "$(wc -l <"$work/before") objects outside the run's namespace before the runs"

log "1. a namespace that exists and is not the run's is refused"
kubectl create namespace iris-serve >/dev/null
status=0
e2e --scenario "$work/smoke.yaml" 2>&1 | tee "$work/refused.log" || status=$?
[ "$status" -ne 0 ] || fail "the run went on in a namespace it does not own"
grep -q "namespace iris-serve already exists, not created by this run" "$work/refused.log" ||
    fail "the refusal does not say why"
grep -q -- "--use-existing-namespace" "$work/refused.log" || fail "the refusal does not say what to do"
kubectl get namespace iris-serve >/dev/null || fail "the refused run touched the namespace"

log "2. --use-existing-namespace, the load from this machine with --url (127.0.0.1:30090 -> NodePort 30080)"
e2e --scenario "$work/smoke.yaml" --use-existing-namespace --url http://127.0.0.1:30090/predict
kubectl get namespace iris-serve >/dev/null || fail "a borrowed namespace was deleted"
report=$(ls -td "$out"/*/ | head -n1)report.md
grep -q "Load from this machine, to http://127.0.0.1:30090/predict" "$report" || fail "$report does not say where the load went"
# The platform team's own clean-up of its namespace.
kubectl delete namespace iris-serve --wait=true --timeout=180s >/dev/null

log "3. the default on an existing cluster: the run's own namespace, the load from 2 runner pods inside, --monitoring"
# The API server validates PodMonitors against the CRD's schema: a wrong one is refused.
cat >"$work/bad-podmonitor.yaml" <<'EOF'
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata: {name: wrong, namespace: default}
spec:
  selector: {matchLabels: {app: x}}
  podMetricsEndpoints: [{port: 8080, interval: often}]
EOF
if kubectl apply --dry-run=server -f - <"$work/bad-podmonitor.yaml" >"$work/bad.log" 2>&1; then
    fail "the API server accepted a PodMonitor its CRD forbids"
fi
echo "the API server refuses a wrong PodMonitor: $(tr '\n' ' ' <"$work/bad.log" | cut -c1-240)"
e2e --scenario autoscale --monitoring 2>&1 | tee "$work/monitoring.log"
report=$(ls -td "$out"/*/ | head -n1)report.md
grep -q "Load from load runners in the cluster: 2 pods" "$report" || fail "$report does not say the load came from 2 runner pods"
grep -q "applied PodMonitor iris-serve/iris-serve" "$work/monitoring.log" ||
    fail "--monitoring did not apply the PodMonitor on a cluster with its CRD"
if kubectl get namespace iris-serve >/dev/null 2>&1; then
    fail "the run's namespace is still there"
fi
objects >"$work/after"
if ! diff "$work/before" "$work/after" >"$work/changed"; then
    echo "objects outside the run's namespace that changed (< before, > after):"
    cat "$work/changed"
    fail "the run changed the cluster outside its namespace"
fi
echo "nothing outside the run's namespace changed ($(wc -l <"$work/after") objects compared)"
[ "$(sha256sum <"$kubeconfig")" = "$kubeconfig_before" ] || fail "the kubeconfig file changed"
echo "the kubeconfig file is as it was"

log "4. the API server stopped: the error names it"
server_url=$(grep -m1 'server:' "$kubeconfig" | awk '{ print $2 }')
docker stop "$control_plane" >/dev/null
status=0
e2e --scenario "$work/smoke.yaml" 2>&1 | tee "$work/unreachable.log" || status=$?
[ "$status" -ne 0 ] || fail "a run against a stopped API server succeeded"
grep -q "$server_url" "$work/unreachable.log" || fail "the error does not name $server_url"
grep -q "$context" "$work/unreachable.log" || fail "the error does not name the context $context"

log "existing cluster: every check passed"
