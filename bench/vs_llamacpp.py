"""radixrt vs llama.cpp on the same GGUF file, side by side in one run.

Both engines load the *same* GGUF file (default: the embedded SmolLM2-135M-Instruct Q4_1),
run the same random-token prompts with the same number of threads, alternating (the order
rotates every repeat), and the table shows medians of ``--repeats`` runs:

  decode   -- batch 1: a 16-token prompt, then 128 new tokens, greedy, EOS ignored by both
              (output tokens/s over the whole request, as bench/throughput.py counts it)
  prefill  -- one 512-token prompt, one output token (prompt tokens/s; time to first token)

llama.cpp runs through llama-cpp-python: ``Llama(path, n_threads=T, n_threads_batch=T,
n_batch=512, logits_all=False)``; a request is ``reset()``, ``eval(prompt)``, then one
``eval([token])`` per new token, each token the argmax of the last logits. radixrt runs
``radixrt.Engine(model_path=PATH, quantization=MODE, num_threads=T)`` with ``temperature 0``
and ``ignore_eos``, once per ``--quantization`` mode (``auto`` is shown with what it
resolved to; a mode that resolves to the same plan as one listed before it is skipped).
Every engine lives in a process of its own (so OpenMP pools never share a process and the
resident memory is that engine's alone); only one of them computes at a time. No run reuses
a cache: each repeat draws new prompts, radixrt's radix cache is flushed and llama.cpp's
context reset before every request.

Both engines link libgomp (OpenMP); ``--omp-wait-policy`` sets OMP_WAIT_POLICY for every
engine process alike (by default passive when the machine is oversubscribed, see --help).

Resident memory: RSS of each engine's process after all the runs (``loaded rss`` in the JSON:
after loading and a warm-up request; ``peak rss``: ru_maxrss, loading included), next to radixrt's KV pool size (``--kv-cache-memory-gb``,
reserved with torch.empty: resident only as far as it is written). The target of issue 13
is radixrt's RSS <= llama.cpp's RSS + the KV pool.

llama-cpp-python is installed into this Python environment if it is missing: pip builds
the pinned version from its source distribution (CMake, several minutes on 2 cores) into a
wheel cached in ``<radixrt cache>/bench-wheels/`` ($RADIXRT_CACHE_DIR or ~/.cache/radixrt)
and installs it from there; later runs (and other environments) reuse that wheel.

Output: a markdown table (stdout and bench/results/vs_llamacpp.md), JSON
(bench/results/vs_llamacpp.json) and a bar plot (bench/results/vs_llamacpp.png); ``--smoke``
writes ``vs_llamacpp_smoke.*`` instead.

  python bench/vs_llamacpp.py [--gguf PATH] [--threads 2] [--repeats 3]
                              [--quantization auto,none,int8] [--smoke]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, bar_plot, cpu_name, markdown_table, median, save_results  # noqa: E402

LLAMA_CPP_VERSION = "0.3.36"
LLAMA = "llama.cpp"
DECODE_PROMPT_LEN = 16


# --------------------------------------------------------------------------- llama-cpp-python


def wheel_dir() -> Path:
    from radixrt.model.loader import default_cache_dir

    return default_cache_dir() / "bench-wheels"


def installed_llama_cpp_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def build_wheel(version: str, out: Path) -> Path:
    """``pip wheel llama-cpp-python==version`` into ``out``, with a bar over the CMake steps."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python",
           "-v", "-w", str(out), f"llama-cpp-python=={version}"]
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    print(f"building llama-cpp-python {version} from source (CMake; several minutes on few "
          f"cores); the wheel is kept in {out}\n  {' '.join(cmd)}", file=sys.stderr)
    log_lines: list[str] = []
    step = re.compile(r"^\s*\[(\d+)/(\d+)\]")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc, \
            tqdm(desc="building llama.cpp", unit="step", file=sys.stderr) as bar:
        assert proc.stdout is not None
        for line in proc.stdout:
            log_lines.append(line)
            if m := step.match(line):
                done, total = int(m.group(1)), int(m.group(2))
                bar.total = total
                bar.update(done - bar.n)
            elif "Downloading" in line or "Collecting" in line or "Created wheel" in line:
                bar.set_postfix_str(line.strip()[:60])
    wheels = sorted(out.glob(f"llama_cpp_python-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "".join(log_lines[-40:])
        raise SystemExit(f"building llama-cpp-python {version} failed (pip exit {proc.returncode}); "
                         f"it needs a C/C++ compiler and CMake. Last lines:\n{tail}")
    return wheels[-1]


def ensure_llama_cpp(version: str, install: bool) -> str:
    """Import-ready llama-cpp-python: the installed one, else the cached wheel, else built."""
    have = installed_llama_cpp_version()
    if have is not None:
        if have != version:
            print(f"using the installed llama-cpp-python {have} (pinned: {version})", file=sys.stderr)
        return have
    if not install:
        raise SystemExit("llama-cpp-python is not installed and --no-install was given")
    out = wheel_dir()
    wheels = sorted(out.glob(f"llama_cpp_python-{version}-*.whl"))
    if wheels:
        print(f"installing llama-cpp-python from the cached wheel {wheels[-1]}", file=sys.stderr)
        wheel = wheels[-1]
    else:
        wheel = build_wheel(version, out)
    # Dependencies (numpy, jinja2, diskcache, typing-extensions) come from the package index.
    proc = subprocess.run([sys.executable, "-m", "pip", "install", str(wheel)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pip install {wheel} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    import importlib

    importlib.invalidate_caches()
    return installed_llama_cpp_version() or version


# --------------------------------------------------------------------------- engine processes


def _resident() -> dict[str, int]:
    import resource

    import psutil

    return {"rss": psutil.Process().memory_info().rss,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


class _LlamaCpp:
    def __init__(self, gguf: str, threads: int, n_ctx: int):
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(gguf, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                                   n_threads_batch=threads, logits_all=False, verbose=False)
        self.vocab = self.llm.n_vocab()
        self.info = {"label": LLAMA, "resolved": f"llama-cpp-python {llama_cpp.__version__}",
                     "vocab_size": self.vocab, "n_ctx": n_ctx, "kv_pool_bytes": None}

    def _argmax(self) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.vocab,))
        return int(logits.argmax())

    def generate(self, prompt: list[int], new_tokens: int) -> list[int]:
        self.llm.reset()  # n_tokens = 0: eval() then drops every cached position
        self.llm.eval(prompt)
        out = [self._argmax()]
        while len(out) < new_tokens:
            self.llm.eval(out[-1:])
            out.append(self._argmax())
        return out

    def close(self) -> None:
        self.llm.close()


class _Radixrt:
    def __init__(self, gguf: str, threads: int, mode: str):
        import dataclasses

        from radixrt import Engine

        self.engine = Engine(model_path=gguf, quantization=mode, num_threads=threads)
        runner = self.engine.runner
        plan = runner.quantization_plan
        self.info = {"label": f"radixrt {mode}", "mode": mode, "resolved": runner.quantization,
                     "plan": plan.describe(),
                     "plan_key": (repr(dataclasses.replace(plan, reason="")) if dataclasses.is_dataclass(plan)
                                  and hasattr(plan, "reason") else plan.describe()),
                     "vocab_size": runner.config.vocab_size, "kv_pool_bytes": runner.kv_bytes,
                     "kv_pool_tokens": runner.max_total_tokens}

    def generate(self, prompt: list[int], new_tokens: int) -> list[int]:
        self.engine.flush_cache()
        params = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
        return self.engine.generate(input_ids=prompt, sampling_params=params)["output_ids"]

    def close(self) -> None:
        self.engine.shutdown()


def _worker(conn, kind: str, gguf: str, threads: int, option: Any, wait_policy: str | None) -> None:
    """One engine in its own process: answers ("generate", prompt, n) and ("memory",)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if wait_policy is not None:  # read by libgomp when the engine's library first loads it
        os.environ["OMP_WAIT_POLICY"] = wait_policy
    try:
        system = _LlamaCpp(gguf, threads, option) if kind == "llama" else _Radixrt(gguf, threads, option)
        system.generate([100, 200, 300], 2)  # warm-up: first calls allocate and initialise kernels
        conn.send(("ok", {**system.info, **{f"loaded_{k}": v for k, v in _resident().items()}}))
    except BaseException as e:  # reported to the parent, which names the engine
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            system.close()
            conn.send(("ok", None))
            return
        if msg[0] == "memory":
            conn.send(("ok", _resident()))
            continue
        _, prompt, n = msg
        t0 = time.perf_counter()
        out = system.generate(prompt, n)
        conn.send(("ok", (time.perf_counter() - t0, out)))


class EngineProcess:
    def __init__(self, kind: str, gguf: str, threads: int, option: Any, wait_policy: str | None):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, kind, gguf, threads, option, wait_policy),
                                daemon=True)
        self.proc.start()
        self.info = self._call(None)

    def _call(self, msg: Any) -> Any:
        if msg is not None:
            self.conn.send(msg)
        status, value = self.conn.recv()
        if status != "ok":
            self.proc.join(timeout=10)
            raise RuntimeError(value)
        return value

    @property
    def label(self) -> str:
        return self.info["label"]

    def generate(self, prompt: list[int], new_tokens: int) -> tuple[float, list[int]]:
        return self._call(("generate", prompt, new_tokens))

    def memory(self) -> dict[str, int]:
        return self._call(("memory",))

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self._call(("stop",))
            except (EOFError, OSError, RuntimeError):
                pass
            self.proc.join(timeout=30)
            if self.proc.is_alive():
                self.proc.terminate()


# --------------------------------------------------------------------------- benchmark


def make_prompt(length: int, vocab: int, rng: random.Random) -> list[int]:
    return [rng.randrange(100, vocab - 100) for _ in range(length)]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def start_engines(args: argparse.Namespace, gguf: str, modes: list[str]) -> list[EngineProcess]:
    from tqdm import tqdm

    engines: list[EngineProcess] = []
    seen: dict[str, str] = {}
    for kind, option in tqdm([("llama", args.n_ctx)] + [("radixrt", m) for m in modes],
                             desc="loading engines", file=sys.stderr):
        engine = EngineProcess(kind, gguf, args.threads, option, args.wait_policy)
        key = engine.info.get("plan_key")
        if key is not None and key in seen:
            print(f"skipping --quantization {option}: it resolves to the same plan as {seen[key]} "
                  f"({engine.info['plan']})", file=sys.stderr)
            engine.close()
            continue
        if key is not None:
            seen[key] = option
        engines.append(engine)
    vocabs = {e.label: e.info["vocab_size"] for e in engines}
    if len(set(vocabs.values())) != 1:
        raise SystemExit(f"the engines disagree on the vocabulary size: {vocabs}")
    return engines


def run(args: argparse.Namespace, engines: list[EngineProcess]) -> dict[str, Any]:
    from tqdm import tqdm

    vocab = engines[0].info["vocab_size"]
    workloads = {"decode": (DECODE_PROMPT_LEN, args.decode_tokens), "prefill": (args.prefill_tokens, 1)}
    times = {w: {e.label: [] for e in engines} for w in workloads}
    outputs: dict[str, list[list[int]]] = {e.label: [] for e in engines}
    rng = random.Random(args.seed)
    bar = tqdm(total=args.repeats * len(workloads) * len(engines), desc="measuring", unit="run", file=sys.stderr)
    with bar:
        for r in range(args.repeats):
            order = engines[r % len(engines):] + engines[:r % len(engines)]  # rotate who goes first
            for workload, (prompt_len, new_tokens) in workloads.items():
                prompt = make_prompt(prompt_len, vocab, rng)  # new every repeat: nothing to reuse
                for e in order:
                    bar.set_postfix_str(f"{workload}: {e.label}")
                    dt, out = e.generate(prompt, new_tokens)
                    if len(out) != new_tokens:
                        raise SystemExit(f"{e.label} returned {len(out)} tokens, not {new_tokens}")
                    times[workload][e.label].append(dt)
                    if workload == "decode":
                        outputs[e.label].append(out)
                    bar.update(1)
    return {"times": times, "outputs": outputs}


def summarize(args: argparse.Namespace, engines: list[EngineProcess], measured: dict[str, Any]
              ) -> list[dict[str, Any]]:
    times, outputs = measured["times"], measured["outputs"]
    rows = []
    base: dict[str, float] = {}
    for e in engines:
        mem = e.memory()
        info = e.info
        decode = args.decode_tokens / median(times["decode"][e.label])
        prefill_s = median(times["prefill"][e.label])
        row = {"engine": e.label, "resolved": info["resolved"],
               "decode tok/s": decode, "prefill tok/s": args.prefill_tokens / prefill_s,
               "ttft (ms)": 1000 * prefill_s,
               "loaded rss MiB": info["loaded_rss"] / 2**20, "rss MiB": mem["rss"] / 2**20,
               "peak rss MiB": mem["peak_rss"] / 2**20,
               "kv pool MiB": info["kv_pool_bytes"] / 2**20 if info["kv_pool_bytes"] else None,
               "decode runs s": [round(t, 4) for t in times["decode"][e.label]],
               "prefill runs s": [round(t, 4) for t in times["prefill"][e.label]],
               "plan": info.get("plan")}
        if e.label == LLAMA:
            base = row
        rows.append(row)
    llama_outs = outputs[LLAMA]
    for row in rows:
        row["decode x llama"] = row["decode tok/s"] / base["decode tok/s"]
        row["prefill x llama"] = row["prefill tok/s"] / base["prefill tok/s"]
        agree = [common_prefix(a, b) for a, b in zip(outputs[row["engine"]], llama_outs)]
        row["same first tokens (min)"] = "" if row is base else f"{min(agree)}/{args.decode_tokens}"
        if row["kv pool MiB"] is not None:
            row["rss <= llama + kv"] = row["rss MiB"] <= base["rss MiB"] + row["kv pool MiB"]
    return rows


COLUMNS = ["engine", "resolved", "decode tok/s", "decode x llama", "prefill tok/s", "prefill x llama",
           "ttft (ms)", "rss MiB", "peak rss MiB", "kv pool MiB", "rss <= llama + kv",
           "same first tokens (min)"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from radixrt.model.quantization import MODES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None,
                    help="GGUF file both engines load (default: the embedded SmolLM2-135M-Instruct Q4_1, "
                         "radixrt.model.loader.default_model_gguf())")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for each engine (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per workload and engine; medians are shown "
                    "(default 3)")
    ap.add_argument("--quantization", default=",".join(MODES),
                    help="comma-separated radixrt --quantization modes to run (default: every mode, "
                         f"{','.join(MODES)}; a mode resolving to a plan already listed is skipped)")
    ap.add_argument("--decode-tokens", type=int, default=128, help="new tokens in the decode workload (default 128)")
    ap.add_argument("--prefill-tokens", type=int, default=512,
                    help="prompt tokens in the prefill workload (default 512)")
    ap.add_argument("--n-ctx", type=int, default=2048,
                    help="llama.cpp context (its KV cache) in tokens (default 2048)")
    ap.add_argument("--omp-wait-policy", choices=["auto", "default", "passive", "active"], default="auto",
                    help="OMP_WAIT_POLICY for every engine process (both link libgomp): default leaves it "
                         "unset (threads spin between parallel regions); auto (the default) uses passive when "
                         "the 1-minute load average exceeds the CPU count, where a spinning thread waits for "
                         "one that is not running (llama.cpp's 2-thread decode measured 1 tok/s spinning vs "
                         "17 passive at load 13 on 2 cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random prompts (default 0)")
    ap.add_argument("--llama-cpp-version", default=LLAMA_CPP_VERSION,
                    help=f"llama-cpp-python version to build when it is missing (default {LLAMA_CPP_VERSION})")
    ap.add_argument("--no-install", action="store_true",
                    help="fail instead of building/installing llama-cpp-python when it is missing")
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny fast run (1 repeat, 8 new tokens, 64-token prefill) writing vs_llamacpp_smoke.*")
    args = ap.parse_args(argv)
    if args.smoke:
        args.repeats, args.decode_tokens, args.prefill_tokens = 1, 8, 64
    modes = list(dict.fromkeys(m.strip() for m in args.quantization.split(",") if m.strip()))
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        ap.error(f"--quantization: unknown mode(s) {unknown or 'none given'}; choose from {', '.join(MODES)}")
    args.modes = modes
    load = os.getloadavg()[0]
    args.load_before = load
    policy = args.omp_wait_policy
    if policy == "auto":
        policy = "passive" if load > (os.cpu_count() or 1) else "default"
    args.wait_policy = None if policy == "default" else policy.upper()
    for name in ("threads", "repeats", "decode_tokens", "prefill_tokens", "n_ctx"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.prefill_tokens + 2 > args.n_ctx or DECODE_PROMPT_LEN + args.decode_tokens > args.n_ctx:
        ap.error("--n-ctx is too small for the workloads")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from radixrt.model.loader import default_model_gguf

    gguf = Path(args.gguf).expanduser() if args.gguf else default_model_gguf()
    if not gguf.is_file():
        raise SystemExit(f"--gguf {gguf}: no such file")
    version = ensure_llama_cpp(args.llama_cpp_version, not args.no_install)
    if args.load_before > (os.cpu_count() or 1):
        print(f"warning: load average {args.load_before:.1f} on {os.cpu_count()} CPUs: other processes "
              "compete for the cores, expect noisy timings", file=sys.stderr)
    engines = start_engines(args, str(gguf), args.modes)
    try:
        measured = run(args, engines)
        rows = summarize(args, engines, measured)
    finally:
        for e in engines:
            e.close()
    load_after = os.getloadavg()[0]

    name = "vs_llamacpp_smoke" if args.smoke else "vs_llamacpp"
    table = markdown_table(rows, COLUMNS)
    command = " ".join(["python bench/vs_llamacpp.py", *(sys.argv[1:] if argv is None else argv)])
    header = (f"`{command}`"
              + f"\n\n{gguf.name}, {args.threads} threads, {cpu_name()}, llama-cpp-python {version}, "
              f"medians of {args.repeats}; decode: {DECODE_PROMPT_LEN}-token prompt + {args.decode_tokens} "
              f"new tokens, batch 1; prefill: {args.prefill_tokens} tokens; OMP_WAIT_POLICY "
              f"{args.wait_policy or 'unset'}; 1-minute load average {args.load_before:.1f} before, "
              f"{load_after:.1f} after ({os.cpu_count()} CPUs)\n")
    print("\n" + header + "\n" + table)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.md").write_text(header + "\n" + table + "\n")
    path = save_results(name, {"gguf": str(gguf), "cpu": cpu_name(), "threads": args.threads,
                               "repeats": args.repeats, "decode_tokens": args.decode_tokens,
                               "prefill_tokens": args.prefill_tokens, "llama_cpp_python": version,
                               "omp_wait_policy": args.wait_policy, "load_before": args.load_before,
                               "load_after": load_after,
                               "rows": rows, "outputs": measured["outputs"]})
    plot = bar_plot(RESULTS_DIR / f"{name}.png", f"radixrt vs llama.cpp, {gguf.name}, {args.threads} threads",
                    ["decode (batch 1)", "prefill"],
                    {r["engine"] if r["engine"] == LLAMA else f"{r['engine']} ({r['resolved']})":
                     [r["decode tok/s"], r["prefill tok/s"]] for r in rows}, "tokens/s (median)")
    print(f"\nresults: {path}, {RESULTS_DIR / (name + '.md')}" + (f", plot: {plot}" if plot else ""))


if __name__ == "__main__":
    main()
