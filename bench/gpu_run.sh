#!/usr/bin/env bash
# The GPU check, one command on a CUDA machine (from the repository root, after
# bench/gpu_prepare.sh here; carry .gpu): the Triton kernel tests compiled on the GPU, then
# bench/gpu.py (greedy-token check of the GPU path, then radixrt vs HF generate). Logs and
# gpu.json go to $OUT (the device tool's folder) or bench/results. Extra arguments go to
# bench/gpu.py. SHAPE= (empty) benchmarks the real default model where it is installed.
# Assumes python3 with torch (CUDA), triton, transformers, tokenizers, safetensors, numpy,
# jinja2 and pytest, as the project's GPU image has.
set -uo pipefail
export PYTHONUNBUFFERED=1
out="${OUT:-bench/results}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD"
if [ -d .gpu/whl ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/radixrt-site \
        .gpu/whl/*.whl && export PYTHONPATH="/tmp/radixrt-site:$PWD"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$out/gpu_env.txt"
"$py" -m pytest -q -x -p no:cacheprovider tests/model/test_triton_attention.py tests/model/test_triton_ops.py \
    2>&1 | tee "$out/gpu_tests.log"
shape="${SHAPE-.gpu/smollm2}"
"$py" bench/gpu.py ${shape:+--random-init "$shape"} "$@" 2>&1 | tee "$out/gpu_bench.log"
[ "$out" = bench/results ] || cp bench/results/gpu.json "$out/" 2>/dev/null || true
