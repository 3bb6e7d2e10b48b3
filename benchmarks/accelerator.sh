#!/usr/bin/env bash
# Runs the benchmarks on an accelerator (GPU/TPU) and writes their JSON lines.
#
#   benchmarks/accelerator.sh [OUT_DIR]        # default: $OUT, else benchmarks/results
#
# Needs a Python with the pinned requirements and an accelerator build of jaxlib
# (e.g. jax[cuda12] on an H200); PYTHON overrides the interpreter (default .venv/bin/python
# when present, else python3). Refuses to run on a CPU-only jax, so CPU figures are never
# recorded as accelerator ones. Writes train_throughput.jsonl, contrastive.jsonl,
# machine.txt (nvidia-smi / jax devices) and the logs, then prints the JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$OUT_DIR"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

backend="$("$PYTHON" -c 'import jax; print(jax.default_backend())')"
if [[ "$backend" == "cpu" ]]; then
  echo "accelerator.sh: jax sees no accelerator (backend cpu); install an accelerator" \
       "jaxlib or use benchmarks/train_throughput.py directly for CPU figures" >&2
  exit 2
fi
{
  "$PYTHON" -c 'import jax; print(jax.__version__, jax.devices())'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm \
      --format=csv || true
} > "$OUT_DIR/machine.txt" 2>&1

# Accelerators need larger batches to fill; 2048 and 4096 stay for the peer comparison.
"$PYTHON" benchmarks/train_throughput.py --batch_sizes="${BATCH_SIZES:-2048,4096,16384,65536}" \
    --embedding_optimizers="${EMBEDDING_OPTIMIZERS:-lazy_adam,dense}" \
    --steps="${STEPS:-30}" --repeats=5 --warmup=3 \
    > "$OUT_DIR/train_throughput.jsonl" 2> "$OUT_DIR/train_throughput.log"
"$PYTHON" benchmarks/contrastive.py --batch_sizes=1024,4096,16384,65536 --chunk_size=1024 \
    --max_temp_gib=64 \
    > "$OUT_DIR/contrastive.jsonl" 2> "$OUT_DIR/contrastive.log"
cat "$OUT_DIR/machine.txt" "$OUT_DIR/train_throughput.jsonl" "$OUT_DIR/contrastive.jsonl"
