# Sourced by the .ci scripts that drive live runs: step headers, failures, and the environment
# of .ci/kind-node.sh they all need.
log() { printf '\n==> %s\n' "$*"; }
# A failure shows the end of the run's log when the script names one ($FAIL_LOG): CI's output
# is then enough to tell why.
fail() {
    echo "FAILED: $*" >&2
    if [ -n "${FAIL_LOG:-}" ] && [ -s "$FAIL_LOG" ]; then
        echo "--- the last 40 lines of $FAIL_LOG:" >&2
        tail -n 40 "$FAIL_LOG" >&2
    fi
    exit 1
}
require_node_env() {
    : "${IRIS_NODE_IMAGE:?run after eval \"\$(bash .ci/kind-node.sh)\"}"
    : "${IRIS_METRICS_SERVER_IMAGE:?}" "${IRIS_KIND:?}"
}
