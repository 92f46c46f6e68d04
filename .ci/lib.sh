# Sourced by the .ci scripts that drive live runs: step headers, failures, and the environment
# of .ci/kind-node.sh they all need.
log() { printf '\n==> %s\n' "$*"; }
fail() {
    echo "FAILED: $*" >&2
    exit 1
}
require_node_env() {
    : "${IRIS_NODE_IMAGE:?run after eval \"\$(bash .ci/kind-node.sh)\"}"
    : "${IRIS_METRICS_SERVER_IMAGE:?}" "${IRIS_KIND:?}"
}
