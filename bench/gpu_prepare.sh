#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored through .git/info/exclude) for bench/gpu_run.sh on a GPU machine
# that can fetch nothing: the default model's config.json and tokenizer files (bench/gpu.py
# benchmarks random weights of that shape there: same speed) and the wheels of the two runtime
# dependencies such a machine lacks (pyzmq, msgspec; CPython 3.12, manylinux x86-64). ~5 MB.
# Run here, once, from anywhere in the repository.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
mkdir -p .gpu/whl
python bench/gpu.py --export-shape .gpu/smollm2
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl "pyzmq>=25" "msgspec>=0.18"
ls -la .gpu/whl
du -sh .gpu
