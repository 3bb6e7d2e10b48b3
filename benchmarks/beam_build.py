"""The Beam build (DirectRunner, in this process) beside the local build of the same
input, interleaved: wall seconds and rows/s of each repeat (BENCHMARKS.md).

  python benchmarks/beam_build.py --format=census \
      --input=census-income.test.gz --repeat=2
"""

import argparse
import shutil
import tempfile
import time

from pico_jax.ingest import beam_pipeline, preprocess


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--format", required=True)
  parser.add_argument("--input", required=True, help="[SPLIT=]PATH,...")
  parser.add_argument("--repeat", type=int, default=2)
  args = parser.parse_args()
  inputs = args.input.split(",")
  builds = {"local": preprocess.build_store, "beam DirectRunner": beam_pipeline.build_store}
  with tempfile.TemporaryDirectory() as tmp:
    for repeat in range(args.repeat):
      for name, build in builds.items():
        out = f"{tmp}/store"
        start = time.perf_counter()
        meta = build(args.format, inputs, out)
        seconds = time.perf_counter() - start
        rows = sum(s["rows"] for s in meta["sources"])
        print(f"repeat {repeat}: {name}: {seconds:.2f} s, {rows / seconds:,.0f} rows/s",
              flush=True)
        shutil.rmtree(out)


if __name__ == "__main__":
  main()
