"""What a decode step costs outside the model forward, part by part, at several batch sizes.

The scheduling core runs in this thread on the default model (``--quantization auto``); --batch
requests with 16-token prompts decode greedily, streaming. The forward of each batch size is run
once and its logits are replayed every step, so a "step" here is everything around the model:

  plan          ForwardBatch construction and the KV slots of the step (forward_plan, kv)
  sampling      the sampler (greedy here)
  postprocess   the rest of PostProcessor.sample_and_advance: row selection, stop checks,
                penalties / grammar bookkeeping, the stop-string detokenizer
  scheduler     the rest of Scheduler.step: prefill-adder check, decode-room check, finishes
  report        the scheduler process's output: ProgressTracker.report + msgpack encode
  detokenize    the detokenizer process: decode + Detokenizer.process + encode
  stream        the HTTP process: decode, ReqState.apply, the SSE chunk (StreamChunks + JSON)

Times are wall-clock medians over --steps steps per batch size (ms per step); ``total`` is their
sum (on a busy machine a step is often preempted somewhere; a part's median rarely is). With --forward the real forward is timed too (its median), for
scale. Run it from another checkout to compare versions (``cd /old/checkout && python
/this/bench/serving/step_overhead.py``: the radixrt imported is the current directory's).

  python bench/serving/step_overhead.py [--batch 1,8,32] [--steps 300] [--forward] [--label NAME]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the radixrt of the checkout this runs from
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # bench/common.py
from common import cpu_name, markdown_table, print_table, save_results  # noqa: E402

PARTS = ["plan", "sampling", "postprocess", "scheduler", "report", "detokenize", "stream"]


class Timed:
    """Wraps a callable; adds its wall time to ``totals[name]``."""

    def __init__(self, fn, totals: dict[str, float], name: str):
        self.fn, self.totals, self.name = fn, totals, name

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.totals[self.name] += time.perf_counter() - t0


def measure(runner, tokenizer, args, batch: int, steps: int, forward: bool) -> dict[str, float]:
    import radixrt.scheduler.scheduler as sched_mod
    from radixrt.config import ServerArgs
    from radixrt.entrypoints.serving import sse
    from radixrt.managers.detokenizer import Detokenizer
    from radixrt.managers.messages import BatchStrOut, BatchTokenIDOut, decode, encode
    from radixrt.managers.progress import ProgressTracker
    from radixrt.managers.results import ReqState, StreamChunks
    from radixrt.sampling_params import SamplingParams
    from radixrt.scheduler.req import Req

    sargs = ServerArgs(model_path=args.model_path, max_total_tokens=runner.max_total_tokens)
    s = sched_mod.Scheduler(sargs, runner, tokenizer)
    progress, detok = ProgressTracker(), Detokenizer(tokenizer)
    states, chunkers = {}, {}
    params = SamplingParams(max_new_tokens=steps + 64, temperature=0, ignore_eos=True)
    for i in range(batch):
        rid = f"b{batch}-{i}"
        progress.track(rid, True)
        states[rid], chunkers[rid] = ReqState(rid=rid, prompt_tokens=16), StreamChunks()
        s.add_request(Req(rid=rid, prompt_ids=list(range(1000 + 16 * i, 1016 + 16 * i)), params=params))
    while len(s.running) < batch or any(r.kv_len < len(r.prompt_ids) for r in s.running):
        s.step()  # the prefills

    totals: dict[str, float] = defaultdict(float)
    real_forward = runner.forward
    cached: dict[int, object] = {}

    def replay(fb):
        n = fb.logits_indices.numel()
        if n not in cached:
            cached[n] = real_forward(fb)
        return cached[n]

    plan = sched_mod.plan_decode
    sched_mod.plan_decode = Timed(plan, totals, "plan")
    runner.forward = Timed(real_forward if forward else replay, totals, "forward")
    s.post.sampler = Timed(s.post.sampler, totals, "sampling")
    s.post.sample_and_advance = Timed(s.post.sample_and_advance, totals, "sample_and_advance")

    def one_step() -> dict[str, float]:
        totals.clear()
        t0 = time.perf_counter()
        touched = s.step()
        t1 = time.perf_counter()
        outs = [o for o in map(progress.report, touched) if o is not None]
        data = encode(BatchTokenIDOut(outputs=outs))
        t2 = time.perf_counter()
        msg = decode(data)
        data = encode(BatchStrOut(outputs=[detok.process_safe(o) for o in msg.outputs]))
        t3 = time.perf_counter()
        now = time.perf_counter()
        for o in decode(data).outputs:
            st = states[o.rid]
            st.apply(o, now)
            chunk = chunkers[o.rid].next(st)
            if chunk is not None:
                sse(chunk)
        t4 = time.perf_counter()
        part = {k: totals.get(k, 0.0) for k in ("plan", "sampling", "forward")}
        part["postprocess"] = totals.get("sample_and_advance", 0.0) - part["sampling"]
        part["scheduler"] = (t1 - t0) - part["plan"] - part["forward"] - totals.get("sample_and_advance", 0.0)
        part["report"], part["detokenize"], part["stream"] = t2 - t1, t3 - t2, t4 - t3
        return part

    try:
        for _ in range(10):
            one_step()
        rows = [one_step() for _ in range(steps)]
    finally:
        sched_mod.plan_decode = plan
        runner.forward = real_forward
    for rid in list(states):
        s.abort_request(rid)
    s.close()
    out = {k: 1e3 * statistics.median(r[k] for r in rows) for k in PARTS}
    out["total"] = sum(out[k] for k in PARTS)

    if forward:
        out["forward"] = 1e3 * statistics.median(r["forward"] for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--quantization", default="auto")
    ap.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    ap.add_argument("--steps", type=int, default=300, help="measured steps per batch size")
    ap.add_argument("--forward", action="store_true", help="run and time the real forward too")
    ap.add_argument("--label", default="", help="suffix of the results file")
    args = ap.parse_args()

    import torch

    from radixrt.config import ServerArgs
    from radixrt.model.runner import ModelRunner
    from radixrt.tokenizer import load_tokenizer

    batches = [int(b) for b in args.batch.split(",") if b]
    need = max(batches) * (args.steps + 100) + 1024
    runner = ModelRunner(ServerArgs(model_path=args.model_path, quantization=args.quantization,
                                    max_total_tokens=max(16384, need)))
    tokenizer = load_tokenizer(runner.model_dir)
    cols = {}
    for b in batches:
        cols[b] = measure(runner, tokenizer, args, b, args.steps, args.forward)
        print(f"batch {b}: " + ", ".join(f"{k} {v:.3f}" for k, v in cols[b].items()), flush=True)
    parts = PARTS + ["total"] + (["forward"] if args.forward else [])
    rows = [{"part": p, **{f"b{b} ms": cols[b][p] for b in batches}} for p in parts]
    table_cols = ["part"] + [f"b{b} ms" for b in batches]
    print(f"\n{cpu_name()}, {torch.get_num_threads()} torch threads, quantization "
          f"{getattr(runner, 'quantization', args.quantization)}, {args.steps} steps per batch size\n")
    print_table(rows, table_cols)
    print()
    print(markdown_table(rows, table_cols))
    path = save_results("step_overhead" + (f"_{args.label}" if args.label else ""),
                        {"rows": rows, "batches": batches, "steps": args.steps, "cpu": cpu_name(),
                         "load_average": os.getloadavg()[0]})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
