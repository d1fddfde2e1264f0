"""A multi-turn chat with the model's chat template; the last answer is streamed.

    python examples/chat.py [--url http://127.0.0.1:30000]
"""

from __future__ import annotations

from _backend import setup_backend

import radixrt as sgl


@sgl.function
def conversation(s, first, second):
    s += sgl.system("You are a concise, friendly assistant.")
    s += sgl.user(first)
    s += sgl.assistant(sgl.gen("reply_1", max_tokens=48))
    with s.user():
        s += second
    with s.assistant():
        s += sgl.gen("reply_2", max_tokens=48)


def main() -> None:
    args = setup_backend(__doc__)
    first, second = "What is a radix tree?", "Why is it useful for caching prompts?"
    state = conversation.run(first=first, second=second, temperature=0, stream=True)
    print(f"USER: {first}\nASSISTANT: ", end="", flush=True)
    for piece in state.text_iter("reply_1"):
        print(piece, end="", flush=True)
    print(f"\nUSER: {second}\nASSISTANT: ", end="", flush=True)
    for piece in state.text_iter("reply_2"):
        print(piece, end="", flush=True)
    print("\n\nmessages:", state.messages())
    args.backend.shutdown()


if __name__ == "__main__":
    main()
