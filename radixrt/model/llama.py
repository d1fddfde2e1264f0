"""radixrt's Llama-family transformer (Llama, Mistral, Qwen2, SmolLM) on the paged KV pool.

Weights are plain tensors (no nn.Module per layer: fewer Python calls per token), with Q/K/V
and gate/up fused into single matmuls (`radixrt.model.linear.Linear` picks the fastest
layout for the device; ``quantize`` swaps in `Int8Linear` for the layers an int8 plan covers).
RMSNorm, rotate-half RoPE (with rope scaling), GQA, SwiGLU, tied embeddings (an int8 LM head
quantizes its own copy; the embedding lookup stays exact), optional QKV bias (Qwen2).

On CPU in float32 with the native kernels built, the element-wise work of a layer runs as four
fused ops (``radixrt/csrc/fused_ops.cpp``: residual add + RMSNorm, RoPE + KV-slot store,
SiLU-and-multiply) instead of ~25 small torch ops; otherwise the torch expressions below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from radixrt.cache.memory_pool import TokenToKVPool
from radixrt.model import native, smoothing
from radixrt.model.config import ModelConfig
from radixrt.model.forward_batch import ForwardBatch
from radixrt.model.gguf_weights import GGUFLinear, GGUFModelWeights
from radixrt.model.linear import Int8Linear, Linear
from radixrt.model.quantization import QuantizationPlan
from radixrt.model.rope import RotaryEmbedding

LINEAR_NAMES = ("qkv", "o", "gate_up", "down")


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Linear | Int8Linear | GGUFLinear
    o: Linear | Int8Linear | GGUFLinear
    post_norm: torch.Tensor
    gate_up: Linear | Int8Linear | GGUFLinear
    down: Linear | Int8Linear | GGUFLinear


class LlamaModel:
    def __init__(self, config: ModelConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device | str, max_positions: int, attn_backend,
                 gguf_weights: GGUFModelWeights | None = None, gguf_isa: int = 0):
        """With ``gguf_weights`` (``--quantization gguf``) the linear layers and the LM head are
        built straight on the file's blocks (kernel path ``gguf_isa``); no fp32 copy of them is
        made, the state dict's float weights serve only as the fallback for types without a
        kernel."""
        self.config = config
        self.dtype = dtype
        self.device = device
        c = config
        self.q_size = c.num_heads * c.head_dim
        self.kv_size = c.num_kv_heads * c.head_dim

        def w(name: str) -> torch.Tensor:
            try:
                t = state_dict.pop(name)
            except KeyError:
                raise ValueError(f"checkpoint is missing weight {name!r}") from None
            return t.to(device=device, dtype=dtype).contiguous()

        def lin(*names: str, bias: torch.Tensor | None = None) -> Linear | GGUFLinear:  # fused along out dim
            weights = [w(n) for n in names]
            if gguf_weights is not None and weights[0].shape[1] % 32 == 0:  # blocks need K % 32 == 0
                return GGUFLinear(gguf_weights.packed(list(names), weights), bias, gguf_isa)
            return Linear(torch.cat(weights), bias)

        self.embed = w("model.embed_tokens.weight")
        self.layers: list[LayerWeights] = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            bias = None
            if c.attention_bias:
                bias = torch.cat([w(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
            self.layers.append(LayerWeights(
                input_norm=w(p + "input_layernorm.weight"),
                qkv=lin(*(p + f"self_attn.{n}_proj.weight" for n in "qkv"), bias=bias),
                o=lin(p + "self_attn.o_proj.weight"),
                post_norm=w(p + "post_attention_layernorm.weight"),
                gate_up=lin(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                down=lin(p + "mlp.down_proj.weight"),
            ))
        self.norm = w("model.norm.weight")
        if c.tie_word_embeddings or "lm_head.weight" not in state_dict:
            if gguf_weights is not None and self.embed.shape[1] % 32 == 0:
                head = "model.embed_tokens.weight"
                if "lm_head.weight" in gguf_weights.tensors and not c.tie_word_embeddings:
                    head = "lm_head.weight"
                self.lm_head = GGUFLinear(gguf_weights.packed([head], [self.embed]), None, gguf_isa)
            else:
                self.lm_head = Linear(self.embed)
        else:
            self.lm_head = lin("lm_head.weight")
        self.num_int8_linears = 0
        self.num_gguf_linears = 0
        self.gguf_requantized: list[str] = []  # gguf mode: tensors given Q8_0 blocks made here
        self._decode_layers = None  # gguf mode: per-layer arguments of radixrt_qg.decode_layer
        self.rope = RotaryEmbedding(c.head_dim, c.rope_theta, c.rope_scaling, max_positions, dtype, device)
        self.attn = attn_backend
        use_fused = torch.device(device).type == "cpu" and dtype == torch.float32
        self.fused = native.fused_ops() if use_fused else None
        if gguf_weights is not None:
            self._gguf_done(gguf_weights)
        # --- GPU (CUDA) path: with the Triton attention backend, the layer's element-wise work
        # runs as the Triton fused ops (radixrt/model/triton_ops.py: the same four ops, same
        # signatures as the native ones, so _forward_fused runs either). On CPU this happens
        # only under TRITON_INTERPRET=1 (tests). ---
        if getattr(attn_backend, "name", "") == "triton":
            from radixrt.model import triton_ops

            self.fused = triton_ops

    def linears(self) -> dict[str, Linear | Int8Linear | GGUFLinear]:
        """Every linear layer by name: ``layers.{i}.{qkv,o,gate_up,down}`` and ``lm_head``."""
        out = {f"layers.{i}.{n}": getattr(L, n) for i, L in enumerate(self.layers) for n in LINEAR_NAMES}
        out["lm_head"] = self.lm_head
        return out

    def set_linear(self, name: str, module) -> None:
        if name == "lm_head":
            self.lm_head = module
        else:
            _, i, n = name.split(".")
            setattr(self.layers[int(i)], n, module)

    @torch.inference_mode()
    def quantize(self, plan: QuantizationPlan, act_max: dict[str, torch.Tensor] | None = None,
                 alpha: float = smoothing.ALPHA) -> None:
        """Replace the fp32 linear layers that an int8 ``plan`` covers by ``Int8Linear``.

        With ``act_max`` (``smoothing.measure_activation_maxima``), each quantized decoder
        layer's input is smoothed (``smoothing.smoothing_scales``) and the division folded into
        its producer: the RMSNorm weight before qkv and gate/up, the up-projection rows before
        down. o is left unsmoothed: its input comes out of attention, a fold into v would have
        to share scales across each GQA group, and its int8 error measured ~0 without it. The
        LM head takes a residual pass instead (smoothing moved its error into its weights); a
        tied head quantizes its own copy, so the embedding lookup stays exact.
        """
        if plan.mode != "int8":
            return

        def weight(lin: Linear) -> torch.Tensor:  # [out, in] fp32 copy of a Linear's weight
            return (lin.weight if lin.weight is not None else lin.weight_t.t()).clone()

        def scales(name: str, w: torch.Tensor) -> torch.Tensor | None:
            if act_max is None or name not in act_max:
                return None
            return smoothing.smoothing_scales(act_max[name], w, alpha).to(w.device)

        def rebuild(old: Linear, w: torch.Tensor, changed: bool = False, **kw) -> Linear | Int8Linear:
            return plan.make_linear(w, old.bias, **kw) if plan.covers(w) or changed else old

        inter = self.config.intermediate_size
        for i, L in enumerate(self.layers):
            p = f"layers.{i}."
            w_gu, w_down = weight(L.gate_up), weight(L.down)
            up_scaled = False
            if plan.covers(w_down) and (s := scales(p + "down", w_down)) is not None:
                w_gu[inter:] /= s[:, None]  # input of down = silu(gate) * up
                w_down *= s
                up_scaled = True
            if plan.covers(w_gu) and (s := scales(p + "gate_up", w_gu)) is not None:
                L.post_norm.div_(s)
                w_gu *= s
            w_qkv = weight(L.qkv)
            if plan.covers(w_qkv) and (s := scales(p + "qkv", w_qkv)) is not None:
                L.input_norm.div_(s)
                w_qkv *= s
            L.qkv = rebuild(L.qkv, w_qkv)
            L.o = rebuild(L.o, weight(L.o))
            L.gate_up = rebuild(L.gate_up, w_gu, changed=up_scaled)
            L.down = rebuild(L.down, w_down)
        self.lm_head = rebuild(self.lm_head, weight(self.lm_head), residual_pass=True)
        self.num_int8_linears = sum(isinstance(m, Int8Linear) for m in self.linears().values())

    @torch.inference_mode()
    def use_gguf_blocks(self, weights: GGUFModelWeights, isa: int = 0) -> None:
        """Replace every linear layer and the LM head by ``GGUFLinear`` on the file's own blocks
        (``--quantization gguf``); ``isa`` picks the kernel path. A tied LM head runs on the
        embedding's blocks; the embedding lookup keeps its exact float32 table."""
        c = self.config
        p_attn = [f"self_attn.{n}_proj.weight" for n in "qkv"]
        p_mlp = ["mlp.gate_proj.weight", "mlp.up_proj.weight"]

        def weight(lin) -> torch.Tensor:  # [out, in] fp32 weight of a Linear (fallback blocks)
            return lin.weight if lin.weight is not None else lin.weight_t.t()

        def make(lin, names: list[str], sizes: list[int]) -> GGUFLinear:
            parts = list(weight(lin).split(sizes)) if len(sizes) > 1 else [weight(lin)]
            return GGUFLinear(weights.packed(names, parts), lin.bias, isa)

        for i, L in enumerate(self.layers):
            p = f"model.layers.{i}."
            L.qkv = make(L.qkv, [p + n for n in p_attn], [self.q_size, self.kv_size, self.kv_size])
            L.o = make(L.o, [p + "self_attn.o_proj.weight"], [c.hidden_size])
            L.gate_up = make(L.gate_up, [p + n for n in p_mlp], [c.intermediate_size] * 2)
            L.down = make(L.down, [p + "mlp.down_proj.weight"], [c.hidden_size])
        tied = c.tie_word_embeddings or "lm_head.weight" not in weights.tensors
        head = "model.embed_tokens.weight" if tied else "lm_head.weight"
        self.lm_head = make(self.lm_head, [head], [c.vocab_size])
        self._gguf_done(weights)

    def _gguf_done(self, weights: GGUFModelWeights) -> None:
        self.num_gguf_linears = sum(isinstance(m, GGUFLinear) for m in self.linears().values())
        self.gguf_requantized = list(weights.requantized)
        self._decode_layers = self._native_decode_layers()

    def _native_decode_layers(self) -> list[tuple[list[torch.Tensor], list[int]]] | None:
        """Arguments of ``radixrt_qg.decode_layer`` per layer (one native call per layer for
        decode batches), or None where it does not apply: a layer that is not all GGUF blocks
        without bias, attention other than the native kernel, no fused ops."""
        if self.fused is None or getattr(self.attn, "name", "") != "native":
            return None
        c, out = self.config, []
        for i, L in enumerate(self.layers):
            lins = (L.qkv, L.o, L.gate_up, L.down)
            if not all(isinstance(m, GGUFLinear) and m.bias is None for m in lins):
                return None
            nxt = self.layers[i + 1].input_norm if i + 1 < len(self.layers) else self.norm
            w = [t for m in lins for t in (m.qs, m.dm)] + [L.post_norm, nxt]
            meta = [v for m in lins for v in (m.out_features, m.bits)] + [c.num_heads, c.num_kv_heads, lins[0].isa]
            out.append((w, meta))
        return out

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch, kv_pool: TokenToKVPool) -> torch.Tensor:
        """Returns logits [len(fb.logits_indices), vocab] in float32."""
        if self.fused is not None:
            return self._forward_fused(fb, kv_pool)
        c = self.config
        T = fb.input_ids.shape[0]
        eps = c.rms_norm_eps
        hidden = (c.hidden_size,)
        h = self.embed.index_select(0, fb.input_ids)
        cos, sin = self.rope.cos_sin(fb.positions)
        loc = fb.out_cache_loc
        for i, L in enumerate(self.layers):
            x = F.rms_norm(h, hidden, L.input_norm, eps)
            qkv = L.qkv(x)
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self.rope.apply(q.view(T, c.num_heads, c.head_dim), cos, sin)
            k = self.rope.apply(k.view(T, c.num_kv_heads, c.head_dim), cos, sin)
            v = v.view(T, c.num_kv_heads, c.head_dim)
            k_buf, v_buf = kv_pool.k_buffers[i], kv_pool.v_buffers[i]
            k_buf[loc] = k
            v_buf[loc] = v
            o = self.attn.forward(q, k_buf, v_buf, fb)
            h = h + L.o(o.reshape(T, self.q_size))
            x = F.rms_norm(h, hidden, L.post_norm, eps)
            gate, up = L.gate_up(x).chunk(2, dim=-1)
            h = h + L.down(F.silu(gate) * up)
        h = h.index_select(0, fb.logits_indices)
        h = F.rms_norm(h, hidden, self.norm, eps)
        return self.lm_head(h).float()

    def _forward_fused(self, fb: ForwardBatch, kv_pool: TokenToKVPool) -> torch.Tensor:
        """``forward`` with the native fused ops (same arithmetic)."""
        c, ops = self.config, self.fused
        T = fb.input_ids.shape[0]
        eps = c.rms_norm_eps
        h = self.embed.index_select(0, fb.input_ids)  # the residual stream, updated in place
        loc, positions = fb.out_cache_loc, fb.positions
        x = ops.rms_norm(h, self.layers[0].input_norm if self.layers else self.norm, eps)
        if fb.is_decode and self._decode_layers is not None:  # one native call per layer
            layer, cos, sin, scale = native.quant_gemm_ops().decode_layer, self.rope.cos, self.rope.sin, self.attn.scale
            for i, (w, meta) in enumerate(self._decode_layers):
                x = layer(h, x, w, meta, positions, cos, sin, kv_pool.k_buffers[i], kv_pool.v_buffers[i], loc,
                          fb.kv_indices, fb.seq_lens, eps, scale)
            return self.lm_head(x.index_select(0, fb.logits_indices)).float()
        for i, L in enumerate(self.layers):
            k_buf, v_buf = kv_pool.k_buffers[i], kv_pool.v_buffers[i]
            q = ops.rope_store(L.qkv(x), positions, self.rope.cos, self.rope.sin, k_buf, v_buf, loc,
                               c.num_heads, c.num_kv_heads)
            o = self.attn.forward(q, k_buf, v_buf, fb)
            x = ops.add_rms_norm_(h, L.o(o.reshape(T, self.q_size)), L.post_norm, eps)
            down = L.down(ops.silu_mul(L.gate_up(x)))
            nxt = self.layers[i + 1].input_norm if i + 1 < len(self.layers) else self.norm
            x = ops.add_rms_norm_(h, down, nxt, eps)
        return self.lm_head(x.index_select(0, fb.logits_indices)).float()
