"""Structured generation side by side: radixrt vs llguidance, outlines-core and xgrammar.

One process, the same JSON schemas, the same tokenizer (the default model's, SmolLM2: 49,152
tokens), every library configured for compact JSON (no optional whitespace) and, where it has
the switch, closed objects (strict mode). A library that does not import is skipped with a
note, so the script runs anywhere (the three other libraries are not radixrt dependencies).

Options used, per library:
- radixrt: ``GrammarCompiler(tokenizer, max_workers=1, strict_objects=True)``, kind
  ``"json_schema"``; its default whitespace (none: compact JSON) and canonical tokens.
  ``--no-strict``: ``strict_objects=False``.
- llguidance: ``LLMatcher.grammar_from_json_schema(schema,
  overrides={"whitespace_flexible": False})`` (its defaults otherwise: separators "," and ":",
  ``lenient`` off, so unsupported keywords are errors), ``LLMatcher(LLTokenizer, grammar)``
  with the tokenizer from ``llguidance.hf.from_tokenizer`` (default slices). It has no
  closed-objects switch: an object without ``additionalProperties`` stays open.
- outlines-core: ``json_schema.build_regex_from_schema(schema_json, whitespace_pattern="")``
  (default ``max_recursion_depth=3``), ``Index(regex, Vocabulary)``, ``Guide(index)``; the
  Vocabulary maps each token's bytes to its ids (all but special tokens and EOS). Objects with
  ``properties`` get only those properties (no switch).
- xgrammar: ``GrammarCompiler(TokenizerInfo.from_huggingface(tokenizer, vocab_size=49152))``
  (default ``max_threads=8``), ``compile_json_schema(schema, any_whitespace=False,
  separators=(",", ":"), strict_mode=True)`` (``--no-strict``: ``strict_mode=False``;
  without ``separators`` its compact mode still writes ", " and ": "), ``GrammarMatcher``.

Measures:
1. compile: per schema, the median of ``--repeat`` compiles, each from an empty cache, timed
   to the first mask: radixrt ``compile`` with the compiler's grammar cache emptied (the
   vocabulary tables and the process-wide DFA cache of shared subtrees stay warm, as in a
   server; ``bench_compile.py`` does the same), a matcher and ``fill_bitmask``; llguidance
   ``grammar_from_json_schema`` + ``LLMatcher`` + the first mask; outlines-core the regex +
   ``Index`` + ``Guide`` + ``write_mask_into``; xgrammar ``compile_json_schema`` (a fresh
   ``GrammarCompiler`` per compile, its TokenizerInfo built once) + ``GrammarMatcher`` +
   ``fill_next_token_bitmask``. Wall time and this process's CPU time (xgrammar compiles with
   threads). An exception (llguidance: a matcher in its error state) counts as rejected.
   Percentiles over the schemas a library compiled, and over the schemas all compiled.
2. masks: per schema, ``--walks`` random token walks of up to ``--steps`` steps (seeded
   ``random.Random(seed)``, uniform over the allowed ids of that library's own mask), timing
   each next-token mask into an int32 bitmask: radixrt ``GrammarMatcher.fill_bitmask`` after
   computing a first-visited state's mask (the whole step, after
   ``GrammarCompiler.warm_caches()``); llguidance ``LLMatcher.unsafe_compute_mask_ptr`` (what
   ``llguidance.torch.fill_next_token_bitmask`` calls); outlines-core ``Guide.write_mask_into``
   (what ``outlines_core.kernels.torch.fill_next_token_bitmask`` calls); xgrammar
   ``GrammarMatcher.fill_next_token_bitmask``.
3. soundness spot check: the walks that ended in an accepting state (EOS sampled, or the
   library says the text so far is complete after the last step) are decoded and checked with
   ``jsonschema.validate(json.loads(text), schema)`` (no format checker).

  python bench/structured/bench_vs_libraries.py [--corpus real|suite] [--repeat 3] [--walks 3]
      [--steps 60] [--libraries radixrt,llguidance,outlines-core,xgrammar] [--no-strict]
      [--no-masks] [--no-compile] [--limit N] [--plot] [--no-save]
"""

from __future__ import annotations

import argparse
import gc as pygc
import importlib.metadata
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "structured"))
sys.path.insert(0, str(ROOT / "tests" / "fsm"))

from bench_compile import percentile, real_corpus, suite_corpus  # noqa: E402
from common import (  # noqa: E402
    RESULTS_DIR,
    bar_plot,
    cpu_name,
    machine_info,
    markdown_table,
    print_table,
    save_results,
)

LIBRARIES = ("radixrt", "llguidance", "outlines-core", "xgrammar")


def bitmask_ids(bitmask, vocab_size: int):
    """The token ids whose bits are set in row 0 of an int32 bitmask (bit i%32 of word i//32)."""
    import numpy as np

    bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits).tolist()


# ---------------------------------------------------------------------------- adapters
# Each adapter: setup() builds the library's tokenizer object once (untimed); compile(schema)
# returns a compiled handle from an empty cache; first_mask(handle, bitmask) makes a matcher and
# its first mask (timed with compile); matcher(handle) starts a walk. A matcher has fill(bitmask)
# (the timed call), accept(token) -> bool, accepting() -> bool.


class RadixRT:
    name = "radixrt"
    package = "radixrt"

    def __init__(self, tokenizer, strict: bool):
        from radixrt.fsm import GrammarCompiler, GrammarMatcher

        self.GrammarMatcher = GrammarMatcher
        self.gc = GrammarCompiler(tokenizer, max_workers=1, strict_objects=strict)
        self.gc.warm_caches()  # what a server does at start
        self.options = f"strict_objects={strict}, compact whitespace (default)"

    def compile(self, schema):
        self.gc._cache.clear()  # an empty grammar cache, the vocabulary tables kept
        return self.gc.compile("json_schema", schema)

    def matcher(self, grammar):
        return _RadixMatcher(self.GrammarMatcher(grammar), grammar)

    def close(self):
        self.gc.close()


class _RadixMatcher:
    def __init__(self, m, grammar):
        self.m, self.g = m, grammar

    def fill(self, bitmask):
        if not self.g.has_mask(self.m.state):
            self.g.mask(self.m.state)  # a first visit: part of the step
        self.m.fill_bitmask(bitmask, 0)

    def accept(self, token: int) -> bool:
        return self.m.accept_token(token)

    def accepting(self) -> bool:
        return self.m.is_terminated() or self.m.is_accepting()


class LLGuidance:
    name = "llguidance"
    package = "llguidance"

    def __init__(self, tokenizer, strict: bool):
        import llguidance
        import llguidance.hf

        self.lg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))
        self.overrides = {"whitespace_flexible": False}
        self.options = ('grammar_from_json_schema(overrides={"whitespace_flexible": false}), '
                        "lenient off (default), no closed-objects switch")

    def compile(self, schema):
        grammar = self.lg.LLMatcher.grammar_from_json_schema(schema, overrides=self.overrides)
        m = self.lg.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return grammar, m

    def matcher(self, handle):
        grammar, _ = handle
        return _LLMatcher(self.lg.LLMatcher(self.tok, grammar, log_level=0))

    def first_matcher(self, handle):
        return _LLMatcher(handle[1])

    def close(self):
        pass


class _LLMatcher:
    def __init__(self, m):
        self.m = m

    def fill(self, bitmask):
        self.m.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.shape[1] * 4)

    def accept(self, token: int) -> bool:
        return self.m.consume_token(token)

    def accepting(self) -> bool:
        return not self.m.is_error() and (self.m.is_accepting() or self.m.is_stopped())


class OutlinesCore:
    name = "outlines-core"
    package = "outlines-core"

    def __init__(self, tokenizer, strict: bool):
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        from radixrt.fsm.vocabulary import get_vocabulary

        self.oc, self.build_regex = outlines_core, build_regex_from_schema
        vocab = get_vocabulary(tokenizer)
        eos = tokenizer.eos_token_id
        by_bytes: dict[bytes, list[int]] = {}
        for i, b in enumerate(vocab.token_bytes):
            if b and i not in vocab.special_ids and i != eos:
                by_bytes.setdefault(b, []).append(i)
        self.vocab = outlines_core.Vocabulary(eos, by_bytes)
        self.eos = eos
        self.options = 'build_regex_from_schema(schema_json, whitespace_pattern="")'

    def compile(self, schema):
        regex = self.build_regex(json.dumps(schema), whitespace_pattern="")
        return self.oc.Index(regex, self.vocab)

    def matcher(self, index):
        return _OCGuide(self.oc.Guide(index), self.eos)

    def close(self):
        pass


class _OCGuide:
    def __init__(self, guide, eos: int):
        self.guide, self.eos = guide, eos

    def fill(self, bitmask):
        self.guide.write_mask_into(bitmask.data_ptr(), bitmask.numel(), 4)

    def accept(self, token: int) -> bool:
        if token == self.eos:  # allowed in final states; the Guide has no move for it
            return self.guide.is_finished()
        try:
            self.guide.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def accepting(self) -> bool:
        return self.guide.is_finished()


class XGrammar:
    name = "xgrammar"
    package = "xgrammar"

    def __init__(self, tokenizer, strict: bool):
        import xgrammar

        self.xg = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.strict = strict
        self.options = ('compile_json_schema(any_whitespace=False, separators=(",", ":"), '
                        f"strict_mode={strict})")

    def compile(self, schema):
        compiler = self.xg.GrammarCompiler(self.info)  # a fresh cache per compile
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                            separators=(",", ":"), strict_mode=self.strict)

    def matcher(self, compiled):
        return _XGMatcher(self.xg.GrammarMatcher(compiled))

    def close(self):
        pass


class _XGMatcher:
    def __init__(self, m):
        self.m = m

    def fill(self, bitmask):
        self.m.fill_next_token_bitmask(bitmask, 0)

    def accept(self, token: int) -> bool:
        return self.m.accept_token(token)

    def accepting(self) -> bool:
        return self.m.is_terminated() or self.m.is_completed()


ADAPTERS = {a.name: a for a in (RadixRT, LLGuidance, OutlinesCore, XGrammar)}


def load_libraries(names: list[str], tokenizer, strict: bool) -> dict:
    """The adapters of the libraries that import, each with its tokenizer object built."""
    out = {}
    for name in names:
        cls = ADAPTERS[name]
        try:
            t0 = time.perf_counter()
            lib = cls(tokenizer, strict)
            lib.setup_s = time.perf_counter() - t0
        except ImportError as e:
            print(f"note: skipping {name}: it does not import ({e})")
            continue
        try:
            lib.version = importlib.metadata.version(cls.package)
        except importlib.metadata.PackageNotFoundError:
            lib.version = "?"
        if name == "radixrt":
            import subprocess

            rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip()
            lib.version += f" ({rev})" if rev else ""
        out[name] = lib
    return out


def _guard_worker(conn, name: str, tok_dir: str, strict: bool, mem_bytes: int) -> None:
    """A child process that compiles schemas with ``name`` under an address-space limit."""
    import resource

    from transformers import AutoTokenizer

    lib = ADAPTERS[name](AutoTokenizer.from_pretrained(tok_dir), strict)
    vm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            vm = int(line.split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + mem_bytes, vm + mem_bytes))
    conn.send("ready")
    while True:
        schema = conn.recv()
        try:
            lib.compile(schema)
            conn.send(None)
        except Exception as e:  # noqa: BLE001 - reported to the parent
            conn.send(f"{type(e).__name__}: {str(e)[:160]}")


class Guard:
    """Compiles each schema once in a child process first, with a time and memory limit, so
    that a library whose compile explodes on a schema (outlines-core builds its whole index
    up front) does not take the machine down; such schemas count as over the limits."""

    def __init__(self, name: str, tok_dir: str, strict: bool, timeout: float, mem_gb: float):
        self.args = (name, tok_dir, strict, int(mem_gb * 2**30))
        self.timeout, self.mem_gb = timeout, mem_gb
        self.proc = self.conn = None

    def _start(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_guard_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        if not self.conn.poll(300):
            raise RuntimeError("guard process did not start")
        self.conn.recv()

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
        self.proc = self.conn = None

    def check(self, schema) -> str | None:
        """None when the schema compiles within the limits; otherwise why not."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(schema)
        try:
            if self.conn.poll(self.timeout):
                return self.conn.recv()
        except EOFError:
            pass
        alive = self.proc.is_alive()
        self._stop()
        return (f"over the limits: no result within {self.timeout:g} s" if alive else
                f"over the limits: the compile died (more than {self.mem_gb:g} GB?)")

    def close(self) -> None:
        self._stop()


def guard_pass(names: list[str], libs: dict, schemas: list, tok_dir: str, strict: bool,
               timeout: float, mem_gb: float) -> dict[str, dict[int, str]]:
    from tqdm import tqdm

    out: dict[str, dict[int, str]] = {}
    for name in names:
        if name not in libs:
            continue
        guard = Guard(name, tok_dir, strict, timeout, mem_gb)
        try:
            out[name] = {i: why for i, (_, schema) in enumerate(
                tqdm(schemas, desc=f"guard {name}", leave=False))
                if (why := guard.check(schema)) is not None and why.startswith("over")}
        finally:
            guard.close()
    return out


def first_matcher(lib, handle):
    return lib.first_matcher(handle) if hasattr(lib, "first_matcher") else lib.matcher(handle)


# ---------------------------------------------------------------------------- measures
def bench_compile(libs: dict, schemas: list, repeat: int, bitmask,
                  over: dict[str, dict[int, str]]) -> dict:
    """Per library: {schema index: (median wall s, median CPU s)} and {schema index: error}."""
    from tqdm import tqdm

    out = {}
    for name, lib in libs.items():
        # One throwaway compile: imports and lazy one-time set-up, as a server's first request.
        lib.compile({"type": "object", "properties": {"a": {"type": "integer"}}})
        times, errors = {}, dict(over.get(name, {}))
        for i, (_sname, schema) in enumerate(tqdm(schemas, desc=f"compile {name}",
                                                   leave=False)):
            if i in errors:
                continue
            runs, cpu_runs = [], []
            try:
                for _ in range(repeat):
                    pygc.collect()
                    c0, t0 = time.process_time(), time.perf_counter()
                    handle = lib.compile(schema)
                    first_matcher(lib, handle).fill(bitmask)
                    runs.append(time.perf_counter() - t0)
                    cpu_runs.append(time.process_time() - c0)
            except Exception as e:  # noqa: BLE001 - any failure to compile is a rejection
                errors[i] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                continue
            times[i] = (statistics.median(runs), statistics.median(cpu_runs))
        out[name] = {"times": times, "errors": errors}
    return out


def compile_summary(results: dict, n_schemas: int) -> tuple[list[dict], list[dict], list[int]]:
    common = sorted(set.intersection(*(set(r["times"]) for r in results.values())))
    rows, common_rows = [], []
    for name, r in results.items():
        wall = [t for t, _ in r["times"].values()]
        cpu = [c for _, c in r["times"].values()]
        rows.append({"library": name, "schemas": n_schemas, "compiled": len(wall),
                     "rejected": sum(not e.startswith("over") for e in r["errors"].values()),
                     "over_limits": sum(e.startswith("over") for e in r["errors"].values()),
                     "p50_ms": 1e3 * percentile(wall, 0.5), "p90_ms": 1e3 * percentile(wall, 0.9),
                     "p99_ms": 1e3 * percentile(wall, 0.99),
                     "max_ms": 1e3 * max(wall) if wall else float("nan"),
                     "cpu_p50_ms": 1e3 * percentile(cpu, 0.5),
                     "cpu_p99_ms": 1e3 * percentile(cpu, 0.99)})
        cw = [r["times"][i][0] for i in common]
        cc = [r["times"][i][1] for i in common]
        common_rows.append({"library": name, "common_schemas": len(common),
                            "p50_ms": 1e3 * percentile(cw, 0.5),
                            "p99_ms": 1e3 * percentile(cw, 0.99),
                            "total_s": sum(cw), "cpu_p50_ms": 1e3 * percentile(cc, 0.5),
                            "cpu_p99_ms": 1e3 * percentile(cc, 0.99)})
    if "radixrt" in results and common:
        base = {i: results["radixrt"]["times"][i][0] for i in common}
        for row, r in zip(common_rows, results.values(), strict=True):
            ratios = [r["times"][i][0] / base[i] for i in common]
            row["median_ratio_vs_radixrt"] = statistics.median(ratios)
    return rows, common_rows, common


def bench_masks(libs: dict, schemas: list, walks: int, steps: int, vocab_size: int,
                token_bytes: list[bytes], eos_ids: set[int],
                over: dict[str, dict[int, str]]) -> tuple[list[dict], dict]:
    import jsonschema
    from tqdm import tqdm

    from radixrt.fsm import allocate_token_bitmask

    rows, details = [], {}
    for name, lib in libs.items():
        bitmask = allocate_token_bitmask(1, vocab_size)
        step_times: list[float] = []
        n_walks = ended_eos = accepted = invalid = dead_ends = refused = skipped = 0
        invalid_examples: list[dict] = []
        for i, (sname, schema) in enumerate(tqdm(schemas, desc=f"masks {name}", leave=False)):
            if i in over.get(name, {}):
                skipped += 1
                continue
            try:
                handle = lib.compile(schema)
            except Exception:  # noqa: BLE001 - rejected schemas are not walked
                skipped += 1
                continue
            for seed in range(walks):
                rng = random.Random(seed)
                m = lib.matcher(handle)
                tokens: list[int] = []
                eos = refused_walk = False
                n_walks += 1
                for _ in range(steps):
                    t0 = time.perf_counter()
                    m.fill(bitmask)
                    step_times.append(time.perf_counter() - t0)
                    ids = bitmask_ids(bitmask, vocab_size)
                    if not ids:
                        dead_ends += 1
                        break
                    tok = rng.choice(ids)
                    if not m.accept(tok):
                        refused += 1
                        refused_walk = True
                        break
                    if tok in eos_ids:
                        eos = True
                        break
                    tokens.append(tok)
                ended_eos += eos
                if refused_walk or not (eos or m.accepting()):
                    continue
                accepted += 1
                raw = b"".join(token_bytes[t] for t in tokens)
                try:
                    jsonschema.validate(json.loads(raw.decode("utf-8")), schema)
                except (ValueError, jsonschema.ValidationError) as e:
                    invalid += 1
                    if len(invalid_examples) < 5:
                        invalid_examples.append({"schema": sname, "seed": seed,
                                                 "text": raw.decode("utf-8", "replace")[:300],
                                                 "error": str(e).splitlines()[0][:200]})
        rows.append({"library": name, "walks": n_walks, "steps": len(step_times),
                     "step_p50_us": 1e6 * percentile(step_times, 0.5),
                     "step_p90_us": 1e6 * percentile(step_times, 0.9),
                     "step_p99_us": 1e6 * percentile(step_times, 0.99),
                     "step_max_us": 1e6 * max(step_times) if step_times else float("nan"),
                     "steps_over_1ms": sum(t > 1e-3 for t in step_times),
                     "ended_eos": ended_eos, "accepting": accepted,
                     "accepted_invalid": invalid, "dead_ends": dead_ends,
                     "refused_tokens": refused, "schemas_skipped": skipped})
        details[name] = {"invalid_examples": invalid_examples}
    return rows, details


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(
        description="radixrt vs llguidance, outlines-core and xgrammar: JSON-schema compile "
                    "time, per-step mask time and a soundness spot check, side by side.")
    ap.add_argument("--tokenizer", default="/tmp/smol/hf",
                    help="directory with the tokenizer (default: the default model's, SmolLM2; "
                         "prepare_model_dir(None) when this has no tokenizer.json)")
    ap.add_argument("--corpus", choices=("real", "suite"), default="real",
                    help="real: the real-world schemas of tests/fsm/data/real_schemas plus the "
                         "realistic ones of bench_compile.py (42); suite: the deduplicated "
                         "JSON-Schema-Test-Suite subset in tests/fsm/data")
    ap.add_argument("--libraries", default=",".join(LIBRARIES),
                    help="comma-separated subset of: " + ", ".join(LIBRARIES)
                         + " (one that does not import is skipped with a note)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="compiles per schema and library, each from an empty cache; the "
                         "median is kept (default 3)")
    ap.add_argument("--walks", type=int, default=3,
                    help="random token walks per schema and library, seeds 0..N-1 (default 3)")
    ap.add_argument("--steps", type=int, default=60,
                    help="at most this many tokens per walk (default 60)")
    ap.add_argument("--no-strict", action="store_true",
                    help="open objects where a library has the switch (radixrt "
                         "strict_objects=False, xgrammar strict_mode=False); default: closed")
    ap.add_argument("--limit", type=int, default=0,
                    help="only the first N schemas of the corpus (0: all; for a quick try)")
    ap.add_argument("--guard", default="outlines-core",
                    help="comma-separated libraries whose compile is first tried once per schema "
                         "in a child process under --guard-timeout and --guard-memory-gb; a "
                         "schema over those limits counts as over_limits and is not measured "
                         "for that library (default: outlines-core, whose index construction "
                         "can take many GB; '' for none)")
    ap.add_argument("--guard-timeout", type=float, default=60.0,
                    help="seconds a guarded compile may take (default 60)")
    ap.add_argument("--guard-memory-gb", type=float, default=4.0,
                    help="GB of address space a guarded compile may add (default 4)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile measure")
    ap.add_argument("--no-masks", action="store_true",
                    help="skip the mask walks and the soundness check")
    ap.add_argument("--plot", action="store_true",
                    help="also write bar plots of the compile (common schemas) and per-step "
                         "mask percentiles to bench/results/structured_vs_libraries_compile.png "
                         "and _masks.png (needs matplotlib)")
    ap.add_argument("--no-save", action="store_true",
                    help="do not write bench/results/structured_vs_libraries.json")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from radixrt.fsm import allocate_token_bitmask
    from radixrt.fsm.vocabulary import get_vocabulary

    torch.set_num_threads(1)  # a shared machine: OpenMP spinning distorts small ops
    names = [n.strip() for n in args.libraries.split(",") if n.strip()]
    unknown = [n for n in names if n not in ADAPTERS]
    if unknown:
        ap.error(f"unknown libraries: {', '.join(unknown)} (known: {', '.join(LIBRARIES)})")

    tok_dir = args.tokenizer
    if not Path(tok_dir, "tokenizer.json").exists():
        from radixrt.model.loader import prepare_model_dir

        tok_dir = str(prepare_model_dir(None))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    vocab_size = len(tokenizer)
    strict = not args.no_strict
    schemas = real_corpus() if args.corpus == "real" else suite_corpus()
    if args.limit:
        schemas = schemas[:args.limit]

    libs = load_libraries(names, tokenizer, strict)
    if not libs:
        print("no library imports: nothing to measure")
        return
    lib_rows = [{"library": n, "version": lib.version, "setup_s": lib.setup_s,
                 "options": lib.options} for n, lib in libs.items()]
    print(f"\nCPU: {cpu_name()}; tokenizer: {tok_dir} ({vocab_size} tokens); corpus "
          f"{args.corpus}: {len(schemas)} schemas; strict objects: {strict}\n")
    print_table(lib_rows, ["library", "version", "setup_s", "options"])

    guarded = [n.strip() for n in args.guard.split(",") if n.strip()]
    over = guard_pass(guarded, libs, schemas, tok_dir, strict, args.guard_timeout,
                      args.guard_memory_gb)
    for n, d in over.items():
        for i, why in d.items():
            print(f"note: {n}, {schemas[i][0]}: {why}")
    bitmask = allocate_token_bitmask(1, vocab_size)
    payload: dict = {"cpu": cpu_name(), "machine": machine_info(), "corpus": args.corpus,
                     "schemas": len(schemas), "strict": strict, "libraries": lib_rows,
                     "over_limits": {n: {schemas[i][0]: w for i, w in d.items()}
                                     for n, d in over.items()},
                     "args": vars(args)}
    md = []
    if not args.no_compile:
        results = bench_compile(libs, schemas, args.repeat, bitmask, over)
        rows, common_rows, common = compile_summary(results, len(schemas))
        print(f"\n## compile to the first mask, median of {args.repeat}, each schema a library "
              "compiled\n")
        print_table(rows, list(rows[0]))
        print(f"\n## compile, the {len(common)} schemas every library compiled\n")
        print_table(common_rows, list(common_rows[0]))
        rejected = {n: {schemas[i][0]: e for i, e in r["errors"].items()}
                    for n, r in results.items()}
        for n, errs in rejected.items():
            if errs:
                print(f"\nrejected by {n}:")
                for s, e in errs.items():
                    print(f"  {s}: {e}")
        per_schema = [{"schema": s, **{n: (1e3 * r["times"][i][0] if i in r["times"] else None)
                                       for n, r in results.items()}}
                      for i, (s, _) in enumerate(schemas)]
        payload.update(compile=rows, compile_common=common_rows, rejected=rejected,
                       compile_per_schema_ms=per_schema)
        md += [markdown_table(rows, list(rows[0])), markdown_table(common_rows,
                                                                   list(common_rows[0]))]
    if not args.no_masks:
        token_bytes = get_vocabulary(tokenizer).token_bytes
        eos_ids = {tokenizer.eos_token_id}
        mask_rows, details = bench_masks(libs, schemas, args.walks, args.steps, vocab_size,
                                         token_bytes, eos_ids, over)
        print(f"\n## per-step mask ({args.walks} walks x up to {args.steps} steps per schema) "
              "and soundness\n")
        print_table(mask_rows, list(mask_rows[0]))
        for n, d in details.items():
            for ex in d["invalid_examples"]:
                print(f"  {n} accepted invalid: {ex}")
        payload.update(masks=mask_rows, mask_details=details)
        md.append(markdown_table(mask_rows, list(mask_rows[0])))
    print("\nmarkdown:\n")
    print(markdown_table(lib_rows, ["library", "version", "options"]))
    for t in md:
        print()
        print(t)
    if args.plot:
        plots = []
        if "compile_common" in payload:
            cc = payload["compile_common"]
            plots.append(bar_plot(
                RESULTS_DIR / "structured_vs_libraries_compile.png",
                f"compile to first mask, {cc[0]['common_schemas']} common {args.corpus} "
                f"schemas ({cpu_name()})", [r["library"] for r in cc],
                {"p50": [r["p50_ms"] for r in cc], "p99": [r["p99_ms"] for r in cc]}, "ms"))
        if "masks" in payload:
            mr = payload["masks"]
            plots.append(bar_plot(
                RESULTS_DIR / "structured_vs_libraries_masks.png",
                f"next-token mask per step, {args.corpus} schemas ({cpu_name()})",
                [r["library"] for r in mr],
                {"p50": [r["step_p50_us"] for r in mr], "p99": [r["step_p99_us"] for r in mr]},
                "us"))
        for path in plots:
            if path:
                print(f"plot: {path}")
    if not args.no_save:
        print(save_results("structured_vs_libraries", payload))


if __name__ == "__main__":
    main()
