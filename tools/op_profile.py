r"""Self time by TensorFlow op type from a profiler trace: where a training step's time goes.

  python tools/benchmark_throughput.py --precision=mixed_bfloat16 --profile_dir=/tmp/prof
  pip install xprof            # the TensorBoard profiler's converter; not a cdt_tf dependency
  python tools/op_profile.py --profile_dir=/tmp/prof

Reads the newest `*.xplane.pb` under --profile_dir (a `--profile_batch` run's TensorBoard log
folder works too), converts it with xprof's `framework_op_stats` tool and prints a Markdown table
of the host ops' self time grouped by op type (oneDNN's `_Mkl*` kernels keep their names), with
the share of the busy (non-idle) time.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdt_tf import cli  # noqa: E402  (absl only: no TensorFlow)

_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Folder holding a profiler trace (searched recursively)."
)
_TOP = flags.DEFINE_integer("top", 15, "Op types to list.")
flags.mark_flag_as_required("profile_dir")


def newest_trace(profile_dir: str) -> str:
    traces = glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True)
    if not traces:
        raise app.UsageError(
            f"no *.xplane.pb under {profile_dir}; trace with --profile_dir or --profile_batch"
        )
    return max(traces, key=os.path.getmtime)


def self_time_by_type(table: dict) -> dict[str, tuple[float, int]]:
    """op type -> (self time in us, occurrences) from framework_op_stats' JSON table (host ops)."""
    columns = [c["id"] for c in table["cols"]]
    at = {name: columns.index(name) for name in ("host_or_device", "type", "occurrences", "total_self_time")}
    totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for row in table["rows"]:
        values = [cell.get("v") for cell in row["c"]]
        if values[at["host_or_device"]] != "Host" or values[at["type"]] == "IDLE":
            continue
        entry = totals[values[at["type"]]]
        entry[0] += float(values[at["total_self_time"]])
        entry[1] += int(values[at["occurrences"]])
    return {name: (t, n) for name, (t, n) in totals.items()}


def main(argv):
    del argv
    try:
        from xprof.convert import raw_to_tool_data
    except ImportError as error:
        raise app.UsageError(f"this tool needs the xprof package ({error}); pip install xprof") from error
    trace = newest_trace(_PROFILE_DIR.value)
    data, _ = raw_to_tool_data.xspace_to_tool_data([trace], "framework_op_stats", {})
    tables = json.loads(data)
    totals = self_time_by_type(tables[0])
    busy = sum(t for t, _ in totals.values())
    print(f"{trace}: {busy / 1e6:.2f} s of host op self time (idle excluded)\n")
    print("| op type | self time (ms) | share | calls |")
    print("|---|---|---|---|")
    for name, (time_us, calls) in sorted(totals.items(), key=lambda item: -item[1][0])[: _TOP.value]:
        print(f"| {name} | {time_us / 1e3:,.0f} | {100 * time_us / busy:.1f} % | {calls} |")


if __name__ == "__main__":
    cli.run_tool(main)
