#!/usr/bin/env python3
"""The merge of a `--load-from cluster` run, checked from outside the harness.

Each runner pod sends its whole-run latency histogram (HdrHistogram V2 deflate, base64) with its
`done` line; the report keeps them as they came (`scenarios[].runners`). This decodes them with
the HdrHistogram project's Python port, adds them up, and holds the union against what the harness
reported from its own merge (Rust's hdrhistogram crate): the response count, the mean, the
percentiles and the maximum. Exit 1 on any difference beyond one histogram bucket.

    python3 .ci/runner-merge.py target/e2e/<run>/report.json
"""
import importlib.metadata
import json
import sys

from hdrh.histogram import HdrHistogram

# The histograms keep 3 significant digits: two implementations may land a quantile on
# neighbouring values of one bucket (their rank rounding differs), never further apart.
RELATIVE = 0.002


def close(ours, theirs):
    return abs(ours - theirs) <= RELATIVE * max(abs(ours), abs(theirs)) + 0.001


def main(path):
    report = json.load(open(path))
    print(f"the reference: hdrhistogram {importlib.metadata.version('hdrhistogram')} (Python)")
    checked = 0
    problems = []
    for scenario in report["scenarios"]:
        shares = scenario.get("runners") or []
        if not shares:
            continue
        name = scenario["scenario"]["name"]
        totals = scenario["load"]["totals"]
        union = None
        for share in shares:
            h = HdrHistogram.decode(share["latency"], b64_wrap=True)
            print(
                f"{name}: runner {share['runner']} ({share['pod']} on {share.get('node')}): "
                f"{share['responses']} responses, {h.get_total_count()} latencies, "
                f"p50 {h.get_value_at_percentile(50) / 1000:.3f} ms, "
                f"p99 {h.get_value_at_percentile(99) / 1000:.3f} ms"
            )
            if h.get_total_count() != share["responses"]:
                problems.append(f"{name}: runner {share['runner']} sent {h.get_total_count()} "
                                f"latencies for {share['responses']} responses")
            if union is None:
                union = h
            else:
                union.add(h)
        reported = totals["latency"]
        count = union.get_total_count()
        rows = [("responses", totals["responses"], count, count == totals["responses"])]
        for key, value in [
            ("mean_ms", union.get_mean_value() / 1000),
            ("p50_ms", union.get_value_at_percentile(50) / 1000),
            ("p90_ms", union.get_value_at_percentile(90) / 1000),
            ("p99_ms", union.get_value_at_percentile(99) / 1000),
            ("p999_ms", union.get_value_at_percentile(99.9) / 1000),
            ("max_ms", union.get_max_value() / 1000),
        ]:
            rows.append((key, reported[key], value, close(reported[key], value)))
        for key, ours, theirs, ok in rows:
            print(f"{name}: {key:9} harness {ours:<12} union of the runners' own {theirs:<12} "
                  f"{'agree' if ok else 'DIFFER'}")
            if not ok:
                problems.append(f"{name}: {key} {ours} in the report, {theirs} in the union")
        checked += 1
    if not checked:
        problems.append(f"{path} has no scenario with runner shares (was the load from the cluster?)")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
