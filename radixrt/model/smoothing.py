"""Per-channel smoothing of int8 layers' inputs (the SmoothQuant idea, Xiao et al. 2023).

A transformer's activations have a few input channels far larger than the rest, so per-token
int8 gives every other channel of the row a coarse step: on SmolLM2-135M, plain int8 raised
perplexity 4.4% over fp32 (the bar is 2%). Dividing input channel k by s_k and multiplying
weight column k by s_k leaves the product unchanged and moves part of the range into the
weights, which are quantized per output channel, where a wide column costs less:

    s_k = max|x_k| ** alpha / max_j |W[j, k]| ** (1 - alpha)

The division is folded into whatever produces the input, so it costs nothing per token (see
``LlamaModel.quantize``). max|x_k| is measured by one fp32 pass over ``CALIBRATION_TEXT``,
cached per model file under the radixrt cache directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from radixrt.cache.memory_pool import TokenToKVPool
from radixrt.model.calibration_text import CALIBRATION_TEXT
from radixrt.model.forward_batch import ForwardBatch

logger = logging.getLogger("radixrt.smoothing")

# Measured with bench/accuracy.py on SmolLM2-135M (docs/benchmarks.md).
ALPHA = 0.5
WINDOW = 256  # tokens per calibration forward
# Bump when what is measured changes, so stale cached maxima are not reused.
CALIBRATION_VERSION = 1


def smoothing_scales(act_max: torch.Tensor, weight: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """s [in] for a layer with input maxima ``act_max`` [in] and ``weight`` [out, in]."""
    a = act_max.float().clamp_min(1e-5)
    w = weight.abs().amax(dim=0).float().clamp_min(1e-5)
    return a.pow(alpha) / w.pow(1 - alpha)


class _MaxRecorder:
    """Stands in for a linear layer during calibration: records max |x| per input channel."""

    def __init__(self, inner, out: dict[str, torch.Tensor], name: str):
        self.inner, self.out, self.name = inner, out, name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float().cpu()
        prev = self.out.get(self.name)
        self.out[self.name] = m if prev is None else torch.maximum(prev, m)
        return self.inner(x)


def measure_activation_maxima(model, windows: list[list[int]]) -> dict[str, torch.Tensor]:
    """max |x| per input channel of every linear layer of ``model`` over ``windows`` of token ids,
    each run as one prefill through the model's own forward."""
    c = model.config
    maxima: dict[str, torch.Tensor] = {}
    originals = model.linears()
    for name, lin in originals.items():
        model.set_linear(name, _MaxRecorder(lin, maxima, name))
    try:
        for ids in windows:
            n = len(ids)
            pool = TokenToKVPool(n, c.num_layers, c.num_kv_heads, c.head_dim, model.dtype, model.device)
            slots = torch.arange(1, n + 1)
            fb = ForwardBatch.build(ids, [n], [n], slots, slots.unsqueeze(0), [0], device=model.device)
            model.forward(fb, pool)
    finally:
        for name, lin in originals.items():
            model.set_linear(name, lin)
    return maxima


def calibration_windows(tokenizer) -> list[list[int]]:
    ids = tokenizer.encode(CALIBRATION_TEXT)
    return [ids[i:i + WINDOW] for i in range(0, len(ids) - WINDOW // 4, WINDOW)]


def cached_activation_maxima(model, model_dir: Path, tokenizer, cache_dir: Path | None
                             ) -> dict[str, torch.Tensor]:
    """``measure_activation_maxima`` over the calibration text, read from / written to
    ``cache_dir`` (keyed by the model's weight files and the calibration; None: no cache)."""
    windows = calibration_windows(tokenizer)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "calibration" / f"{_cache_key(model_dir, windows)}.pt"
        try:
            return torch.load(path, weights_only=True)
        except FileNotFoundError:
            pass
        except Exception as e:  # a corrupt or foreign file: measure again
            logger.warning("ignoring unreadable calibration cache %s: %s", path, e)
    t0 = time.perf_counter()
    maxima = measure_activation_maxima(model, windows)
    logger.info("measured activation ranges for int8 smoothing on %d tokens in %.1fs",
                sum(map(len, windows)), time.perf_counter() - t0)
    if path is not None:
        tmp = None
        try:  # write to a temporary file and rename: readers never see half a file
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            torch.save(maxima, tmp)
            os.replace(tmp, path)
        except OSError as e:
            logger.warning("could not cache calibration in %s: %s", path.parent, e)
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    return maxima


def _cache_key(model_dir: Path, windows: list[list[int]]) -> str:
    h = hashlib.sha256(f"v{CALIBRATION_VERSION}|{Path(model_dir).resolve()}|{windows}".encode())
    for f in sorted(Path(model_dir).glob("*.safetensors")) + [Path(model_dir) / "config.json"]:
        st = f.stat()
        h.update(f"|{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
