#!/usr/bin/env bash
# One-shot accelerator (GPU/TPU) benchmark run: contrast kernels, W2 step, W2 loop,
# and a profile; writes their JSON lines and prints them. Meant to finish in about
# 8 minutes on one H200 (every stage has its own time limit and a failing stage does
# not stop the next one).
#
#   benchmarks/accelerator.sh [OUT_DIR]        # default: $OUT, else benchmarks/results
#
# Needs a Python with the pinned requirements and an accelerator build of jaxlib
# (e.g. jax[cuda12]); PYTHON overrides the interpreter (default .venv/bin/python when
# present, else python3). Refuses to run on a CPU-only jax, so CPU figures are never
# recorded as accelerator ones. Stages (outputs in OUT_DIR):
#   selfcheck.txt          the Pallas contrast kernel's self-check verdict
#   contrastive.jsonl      pico_contrastive_loss fwd+bwd, xla | chunked | pallas,
#                          batch 2,048 .. 65,536, float32 and bfloat16
#   train_f32.jsonl        W2 step, PICO off | on (xla, pallas), float32, lazy Adam
#   train_bf16.jsonl       the same in bfloat16 (PICO off | on with pallas)
#   loop.jsonl             W2 loop at 4,096 and 16,384: step alone, loop, loop + prefetch
#   profile/               jax.profiler traces of the W2 step at 4,096 (PICO off | pallas)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$OUT_DIR"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BATCHES="${BATCH_SIZES:-2048,4096,16384,65536}"
LOOP_BATCHES="${LOOP_BATCH_SIZES:-4096,16384}"
PROFILE_BATCH="${PROFILE_BATCH_SIZE:-4096}"

backend="$("$PYTHON" -c 'import jax; print(jax.default_backend())')"
if [[ "$backend" == "cpu" ]]; then
  echo "accelerator.sh: jax sees no accelerator (backend cpu); install an accelerator" \
       "jaxlib or use the benchmarks directly for CPU figures" >&2
  exit 2
fi
{
  "$PYTHON" -c 'import jax; print(jax.__version__, jax.devices())'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm \
      --format=csv || true
} > "$OUT_DIR/machine.txt" 2>&1

stage() {  # stage NAME SECONDS OUTFILE COMMAND...: runs with a limit, never aborts the run.
  local name="$1" limit="$2" out="$3"; shift 3
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT_DIR/$out" 2> "$OUT_DIR/$name.log"
  echo "stage $name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT_DIR/stages.txt"
}

stage selfcheck 30 selfcheck.txt "$PYTHON" -W always -c \
    'from pico_jax import contrast; print("pallas resolves to:", contrast.resolve("pallas"))'
stage contrastive 90 contrastive.jsonl "$PYTHON" benchmarks/contrastive.py \
    --batch_sizes="$BATCHES" --implementation=xla,chunked,pallas --dtypes=float32,bfloat16 \
    --chunk_size=1024 --max_temp_gib=64 --repeats=5
stage train_f32 150 train_f32.jsonl "$PYTHON" benchmarks/train_throughput.py \
    --batch_sizes="$BATCHES" --implementation=xla,pallas \
    --steps="${STEPS:-20}" --repeats=4 --warmup=2
stage train_bf16 90 train_bf16.jsonl "$PYTHON" benchmarks/train_throughput.py \
    --batch_sizes="$BATCHES" --implementation=pallas --compute_dtype=bfloat16 \
    --steps="${STEPS:-20}" --repeats=4 --warmup=2
stage loop 60 loop.jsonl "$PYTHON" benchmarks/loop_throughput.py \
    --batch_sizes="$LOOP_BATCHES" --implementation=auto --rows="${LOOP_ROWS:-1000000}" \
    --steps=40 --repeats=4
stage profile 40 profile.jsonl "$PYTHON" benchmarks/train_throughput.py \
    --batch_sizes="$PROFILE_BATCH" --implementation=pallas --steps=4 --repeats=2 --warmup=2 \
    --profile_dir="$OUT_DIR/profile" --profile_steps=5
cat "$OUT_DIR/machine.txt" "$OUT_DIR/stages.txt" "$OUT_DIR/selfcheck.txt" \
    "$OUT_DIR/contrastive.jsonl" "$OUT_DIR/train_f32.jsonl" "$OUT_DIR/train_bf16.jsonl" \
    "$OUT_DIR/loop.jsonl"
