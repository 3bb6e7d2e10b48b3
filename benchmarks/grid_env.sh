# Sourced by the experiment grids (pico_grid.sh, baselines_grid.sh) after they set
# DEFAULT_WORKDIR: the checkout root as working directory, the grid's directory
# (the script's first argument), CPU, the checkout's package ahead of any installed
# one, and a compilation cache in the grid's directory so that runs differing only in
# data reuse the compiled steps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WORKDIR="${1:-$DEFAULT_WORKDIR}"
PYTHON="${PYTHON:-.venv/bin/python}"
export JAX_PLATFORMS=cpu JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORKDIR/jax_cache}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$WORKDIR"
PC=data.synthetic.positive_control
