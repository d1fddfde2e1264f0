"""Frontend benchmark: prefix-heavy programs with the radix cache on vs off.

Two workloads run against a local radixrt server (started with `Runtime`), once with the
radix cache and once with ``--disable-radix-cache``, in one run:

- tree of thought: a shared document, forked into branches that fork again, each leaf
  judged with `select` (fork/join + select traffic);
- few-shot QA: `run_batch` over questions that share a long few-shot prefix.

Reported per workload: wall time, programs/s, generated tokens/s, the cache-on/off
throughput ratio, the server's cache hit rate (cached / prompt tokens) and the prompt tokens
it actually computed. Greedy decoding, so both modes generate the same tokens.

    python bench/lang/bench_lang.py [--quick] [--write-docs]
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import re
import sys
import time
from dataclasses import dataclass

import radixrt as sgl

DOCUMENT = (
    "Riverton is a town of 40,000 people built along a single river crossing. Every weekday "
    "morning about 9,000 cars cross the old two-lane bridge towards the industrial park on the "
    "east bank, and the queue often reaches two kilometres. The town has one bus line that runs "
    "every forty minutes, a disused freight railway that follows the river, and a cycling club "
    "with 300 members who complain that there is no safe route across the water. The council "
    "has a yearly budget of 12 million euros, of which 2 million may be spent on transport. "
    "Shops in the centre report that parking is scarce and that customers avoid the morning "
    "rush. The industrial park employs 6,000 people in three shifts starting at 6am, 2pm and "
    "10pm, and its largest employer has offered to share the cost of a solution.\n"
)
QUESTIONS = [
    "How can Riverton reduce the morning queue at the bridge?",
    "What should the council spend the transport budget on first?",
]
FEW_SHOT = "".join(f"Q: {q}\nA: {a}\n" for q, a in [
    ("What is the capital of Italy?", "Rome"), ("What is the opposite of hot?", "Cold"),
    ("Which animal barks?", "Dog"), ("What color is grass?", "Green"),
    ("How many legs does a spider have?", "Eight"), ("What is frozen water called?", "Ice"),
    ("Which planet is known as the red planet?", "Mars"), ("What do bees make?", "Honey"),
    ("What is the largest ocean?", "Pacific"), ("Which gas do plants absorb?", "CO2"),
    ("What is the boiling point of water in Celsius?", "100"), ("Who wrote Hamlet?", "Shakespeare"),
    ("What is the tallest animal?", "Giraffe"), ("Which metal is liquid at room temperature?", "Mercury"),
    ("How many days are in a leap year?", "366"), ("What is the chemical symbol for gold?", "Au"),
])
FEW_SHOT_QUESTIONS = [
    "What is the capital of France?", "What is the opposite of up?", "Which animal meows?",
    "What color is the sky?", "What do cows drink?", "How many wheels does a bicycle have?",
    "What is the largest planet?", "Which bird cannot fly?",
]


@sgl.function
def tree_of_thought(s, question, width=3, depth_width=2, tokens=12):
    s += "Read the report and answer the question.\n\n" + DOCUMENT
    s += "Question: " + question + "\n"
    plans = s.fork(width)
    plans += lambda i: f"Idea {i + 1}:" + sgl.gen("idea", max_tokens=tokens, stop="\n")
    # All ideas generate concurrently; each plan's fork waits for its own idea only.
    leaves = [plan.fork(depth_width) for plan in plans]
    for steps in leaves:
        steps += lambda j: f"\nStep {j + 1}:"
        steps += sgl.gen("step", max_tokens=tokens, stop="\n")
        steps += "\nIs this step practical? " + sgl.select("ok", ["yes", "no"])
    for steps in leaves:
        steps.join()
    plans.join()


@sgl.function
def few_shot_qa(s, question, tokens=6):
    s += "Answer with one word.\n" + FEW_SHOT
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=tokens, stop="\n")


@dataclass
class Result:
    workload: str
    cache: bool
    programs: int
    seconds: float
    generated: int
    prompt_tokens: int
    cached_tokens: int
    computed_tokens: int

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _stats(runtime) -> dict:
    return runtime.get_server_info()["stats"]


def _measure(runtime, name: str, cache: bool, fn) -> Result:
    before = _stats(runtime)
    start = time.perf_counter()
    programs = fn()
    seconds = time.perf_counter() - start
    after = _stats(runtime)
    delta = {k: after[k] - before[k] for k in after}
    return Result(name, cache, programs, seconds, delta["num_generated_tokens"], delta["num_prompt_tokens"],
                  delta["num_cached_tokens"], delta["num_prefill_tokens"])


def run_mode(cache: bool, quick: bool) -> list[Result]:
    # Without the cache every request recomputes its whole prompt: on a small CPU box a request
    # can wait many minutes behind the others, so the per-request timeout is generous.
    runtime = sgl.Runtime(disable_radix_cache=not cache, max_total_tokens=32768, log_level="warning",
                          launch_timeout=600, timeout=3600)
    try:
        backend = runtime.endpoint
        few_shot_qa.run(question="Warm-up?", backend=backend, temperature=0)  # first-call costs
        runtime.flush_cache()
        questions = QUESTIONS[:1] if quick else QUESTIONS
        fs_questions = FEW_SHOT_QUESTIONS[:4] if quick else FEW_SHOT_QUESTIONS

        def tot() -> int:
            states = tree_of_thought.run_batch([{"question": q} for q in questions], backend=backend,
                                               temperature=0, num_threads=len(questions))
            for st in states:
                assert len(st["step"]) == 3, st.error()
            return len(states)

        def few() -> int:
            states = few_shot_qa.run_batch([{"question": q} for q in fs_questions], backend=backend,
                                           temperature=0, num_threads=len(fs_questions))
            for st in states:
                st["answer"]
            return len(states)

        return [_measure(runtime, "tree of thought (fork + select)", cache, tot),
                _measure(runtime, "few-shot QA (run_batch)", cache, few)]
    finally:
        runtime.shutdown()


def report(results: list[Result], quick: bool) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} CPU ({platform.python_version()}), "
        "default model (SmolLM2-135M-Instruct), greedy, one local server per mode, "
        f"{'quick sizes' if quick else 'full sizes'}: `python bench/lang/bench_lang.py"
        f"{' --quick' if quick else ''}`. On a shared machine the wall times move with load; the "
        "token counts and the hit rate do not.",
        "",
        "| workload | radix cache | programs | wall s | programs/s | gen tok/s | cache hit rate | prompt tokens computed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.workload} | {'on' if r.cache else 'off'} | {r.programs} | {r.seconds:.1f} | "
                     f"{r.programs / r.seconds:.2f} | {r.generated / r.seconds:.1f} | {r.hit_rate:.1%} | "
                     f"{r.computed_tokens} / {r.prompt_tokens} |")
    lines.append("")
    for name in dict.fromkeys(r.workload for r in results):
        on = next(r for r in results if r.workload == name and r.cache)
        off = next(r for r in results if r.workload == name and not r.cache)
        lines.append(f"- {name}: cache on is **{off.seconds / on.seconds:.2f}x** the throughput of cache off "
                     f"(hit rate {on.hit_rate:.1%}; {off.computed_tokens - on.computed_tokens} fewer prompt "
                     "tokens computed).")
    return "\n".join(lines) + "\n"


def write_docs(section: str, path: pathlib.Path) -> None:
    """Replace (or add) the "## Frontend" section of docs/benchmarks.md."""
    heading = "## Frontend"
    body = f"{heading}\n\n{section}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda m: body + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer programs (a smoke run)")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    results = run_mode(True, args.quick) + run_mode(False, args.quick)
    text = report(results, args.quick)
    print(text)
    if args.write_docs:
        write_docs(text, pathlib.Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md")
        print("updated docs/benchmarks.md", file=sys.stderr)


if __name__ == "__main__":
    main()
