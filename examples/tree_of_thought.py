"""Tree of thought: fork the state into branches that share the prompt's KV, expand each
branch twice, let the model judge every leaf, then pick the best.

    python examples/tree_of_thought.py [--url http://127.0.0.1:30000]
"""

from __future__ import annotations

from _backend import setup_backend

import radixrt as sgl


@sgl.function
def tree_of_thought(s, question, width=2):
    s += sgl.user(question + " Think step by step.")
    s += sgl.assistant_begin()
    plans = s.fork(width)  # the branches share the question's KV through the radix cache
    plans += lambda i: f"Approach {i + 1}:" + sgl.gen("plan", max_tokens=24, stop="\n", temperature=0.8)
    leaves = [plan.fork(width) for plan in plans]  # each waits for its own plan only
    for steps in leaves:
        steps += "\nNext step:" + sgl.gen("step", max_tokens=24, stop="\n", temperature=0.8)
        steps += "\nIs this a good step? " + sgl.select("verdict", ["yes", "no"])
    for steps in leaves:
        steps.join()
    plans.join()
    s += sgl.assistant_end()
    return [(plan, step, verdict) for plan, steps, verdicts in zip(s["plan"], s["step"], s["verdict"], strict=True)
            for step, verdict in zip(steps, verdicts, strict=True)]


def main() -> None:
    args = setup_backend(__doc__)
    state = tree_of_thought.run(question="How can a small town reduce traffic jams?")
    leaves = state.ret_value
    for plan, step, verdict in leaves:
        print(f"[{verdict:3s}] {plan.strip()} -> {step.strip()}")
    good = [leaf for leaf in leaves if leaf[2] == "yes"] or leaves
    print("\nchosen:", good[0][0].strip(), "->", good[0][1].strip())
    args.backend.shutdown()


if __name__ == "__main__":
    main()
