#!/usr/bin/env bash
# The GPU figures in one run, on a bare GPU machine with no network (the device tool's H200).
#
#   bash benchmarks/gpu_check.sh DATA_DIR OUT [--smoke]
#
# That machine's python3 already holds torch, Lightning, torchmetrics, matplotlib, Pillow and
# TensorBoard; jsonargparse (for the CLI) comes as wheels in .gpu_carry/wheels, made here with
#   pip download --no-deps -d .gpu_carry/wheels "jsonargparse[signatures]" docstring-parser typeshed-client
# and the MNIST archives as .gpu_carry/mnist (both ignored by git, carried by the device tool).
# The package itself runs from the repository (PYTHONPATH), so nothing is built there.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:?usage: gpu_check.sh DATA_DIR OUT [--smoke]}
out=${2:?usage: gpu_check.sh DATA_DIR OUT [--smoke]}
shift 2
if ! python3 -c "import jsonargparse, docstring_parser, typeshed_client" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps .gpu_carry/wheels/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi || true
python3 benchmarks/gpu_check.py --data_dir "$data_dir" --out "$out" "$@"
