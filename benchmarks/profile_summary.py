"""The top device-time operations of ``jax.profiler`` traces, as a Markdown table.

  python benchmarks/profile_summary.py OUT_DIR/profile/* --steps=5 --top=15

Reads the Perfetto trace (``perfetto_trace.json.gz``, written by
``train_throughput.py --profile_dir``) under each given directory and sums the
durations of the complete events by name on the device (processes named
``/device:...``), on its ``--line`` timeline ("XLA Ops": one event per HLO operation;
the "XLA Modules" line would count every op twice) or, where the device has no such
line, on its "Stream" timelines (the kernels). A CPU-only trace has no device and falls
back to every timeline. Prints, per trace, the total per step and the ``--top`` operations
with their time per step and share: the input of BENCHMARKS.md's profile table.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os


def device_times(trace_dir: str, line: str = "XLA Ops") -> tuple[dict[str, float], str]:
  """({event name: total microseconds}, which timelines were summed)."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True))
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  devices = {pid for pid, name in names.items() if name.startswith("/device:")}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name" and e["pid"] in devices}
  chosen = {key for key, name in threads.items() if name == line}
  where = f"device '{line}' lines"
  if not chosen:
    chosen = {key for key, name in threads.items() if name.startswith("Stream")}
    where = "device streams"
  if not devices:
    where = "all timelines (no device in the trace)"
  totals = collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    if not devices or (e["pid"], e.get("tid")) in chosen or (not chosen and e["pid"] in devices):
      totals[e["name"]] += float(e.get("dur", 0.0))
  return dict(totals), where


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("trace_dirs", nargs="+")
  parser.add_argument("--steps", type=int, default=5, help="steps in each trace")
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("--line", default="XLA Ops", help="the device timeline to sum")
  args = parser.parse_args()
  for trace_dir in args.trace_dirs:
    totals, where = device_times(trace_dir, args.line)
    total = sum(totals.values())
    print(f"\n{os.path.basename(os.path.normpath(trace_dir))}: "
          f"{total / args.steps / 1e3:.3f} ms per step over {where}\n")
    print("| operation | ms per step | share |")
    print("|---|---|---|")
    for name, us in sorted(totals.items(), key=lambda kv: -kv[1])[:args.top]:
      print(f"| `{name[:80]}` | {us / args.steps / 1e3:.3f} | {us / max(total, 1e-9):.1%} |")


if __name__ == "__main__":
  main()
