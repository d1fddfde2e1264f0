"""The Triton kernels compile for a real GPU (sm_90: TTIR -> PTX -> cubin with triton's bundled
ptxas), without one. The interpreter accepts things a GPU build rejects (``tl.dot`` tiles under
16, some control flow), so this catches GPU-only errors in CI. Runs in a subprocess: the test
process has TRITON_INTERPRET=1 set, and its kernels are already the interpreted kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

_SCRIPT = r"""
import json, os, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from radixrt.model import triton_attention as ta, triton_ops as to

INDEX = {"kv_idx_ptr", "seq_lens_ptr", "req_ids_ptr", "q_rows_ptr", "ext_lens_ptr", "q_starts_ptr",
         "pos_ptr", "loc_ptr"}

def arg_type(name, dt):
    if name.endswith("_ptr"):
        return "*i64" if name in INDEX else "*fp32" if name.startswith("mid_") else "*" + dt
    return "fp32" if name in ("sm_scale_log2", "eps") else "i32"

out = []
for fn, consts in [
    (ta._decode_stage1_kernel, dict(G=3, D=64, BLOCK_H=16, BLOCK_D=64, BLOCK_N=ta.DECODE_BLOCK_N,
                                    NUM_SPLITS=4, HAS_IDX=True, PRECISION=None)),
    (ta._decode_merge_kernel, dict(D=64, BLOCK_D=64, NUM_SPLITS=4, BLOCK_S=4, HAS_IDX=True)),
    (ta._extend_kernel, dict(G=3, GP=4, D=64, BLOCK_M=ta.EXTEND_BLOCK_M // 4, BLOCK_N=ta.EXTEND_BLOCK_N,
                             BLOCK_D=64, HAS_IDX=True, PRECISION=None)),
    (to._rms_norm_kernel, dict(HAS_DELTA=True, ROWS=1, BLOCK=1024)),
    (to._silu_mul_kernel, dict(ROWS=1, BLOCK=1024)),
    (to._rope_store_kernel, dict(H=9, KV=3, D=64, ROWS=1, HP=16, KVP=4, HALF=32)),
]:
    sig = {n: "constexpr" if n in consts else arg_type(n, "bf16") for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32))
    out.append([fn.__name__, len(k.asm["cubin"])])
print(json.dumps(out))
"""


def test_kernels_compile_for_sm90(tmp_path):
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("triton's NVIDIA backend (ptxas) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a fresh cache: really compile
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [name for name, _ in built] == ["_decode_stage1_kernel", "_decode_merge_kernel", "_extend_kernel",
                                           "_rms_norm_kernel", "_silu_mul_kernel", "_rope_store_kernel"]
    assert all(size > 0 for _, size in built)
