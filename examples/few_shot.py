"""Few-shot question answering over a batch: the shared examples are computed once.

    python examples/few_shot.py [--url http://127.0.0.1:30000]
"""

from __future__ import annotations

import time

from _backend import setup_backend

import radixrt as sgl

EXAMPLES = """Answer with one word.
Q: What is the capital of Italy?
A: Rome
Q: What is the opposite of hot?
A: Cold
Q: Which animal barks?
A: Dog
Q: What color is grass?
A: Green
"""


@sgl.function
def few_shot_qa(s, question):
    s += EXAMPLES
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=6, stop="\n")


def main() -> None:
    args = setup_backend(__doc__)
    questions = ["What is the capital of France?", "What is the opposite of up?",
                 "Which animal meows?", "What color is the sky?", "What do cows drink?",
                 "What is frozen water called?"]
    start = time.perf_counter()
    states = few_shot_qa.run_batch([{"question": q} for q in questions], temperature=0, progress_bar=True)
    elapsed = time.perf_counter() - start
    for q, st in zip(questions, states, strict=True):
        meta = st.get_meta_info("answer")
        print(f"{q:35s} -> {st['answer'].strip():12s} ({meta['cached_tokens']}/{meta['prompt_tokens']} "
              "prompt tokens from cache)")
    print(f"{len(questions)} programs in {elapsed:.1f}s")
    args.backend.shutdown()


if __name__ == "__main__":
    main()
