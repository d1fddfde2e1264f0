"""Jump-forward: turn the bytes a grammar forces into tokens the model would have produced.

Where the DFA has a single path (a JSON key, ``":"``, a closing ``"}``), the text is known and can
be appended in one extend step instead of one decode step per token. The trap (why SGLang
dropped the feature) is tokenization: the forced text split on its own differs from how the
model tokenizes it in context, and forcing a token that is a prefix of a longer valid token
distorts the next logits. The algorithm:

1. ``forced`` = the bytes the DFA forces from the current state (states that are not accepting
   and have one live outgoing byte).
2. Take the last ``k <= max_rollback_tokens`` committed tokens (never special tokens, starting on
   a UTF-8 character boundary) as the tail; ``text = tail + forced``, cut to whole characters.
3. Retokenize ``text`` with the tokenizer. If the tokens' bytes are not exactly ``text`` (e.g. a
   SentencePiece dummy prefix), give up (no jump).
4. Keep the longest common prefix with the committed tail; the rest of the tail is rolled back
   (``rollback`` tokens) and replaced by the retokenized tokens.
5. Hold back from the end: while the last new token starts inside the forced text and some
   vocabulary token starts with the bytes from that token's start to the end of ``text`` and is
   longer, with a next byte the grammar allows there, drop it — the model may want that longer
   token, so it samples it. If the token to hold back starts inside the committed tail, the
   whole jump is abandoned (we never drop committed text).
6. Jump only if the kept tokens extend beyond the tail.

The caller rolls back ``rollback`` tokens (matcher and KV cache), then appends ``token_ids`` as one
extend step; ``GrammarMatcher.apply_jump_forward`` does the matcher part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixrt.fsm.grammar import CompiledGrammar
from radixrt.fsm.utf8 import whole_chars_prefix


@dataclass(frozen=True)
class JumpForward:
    rollback: int  # committed tokens to remove before appending
    token_ids: list[int] = field(default_factory=list)  # tokens to append
    forced: bytes = b""  # what the grammar forced (for logs and metrics)

    def __bool__(self) -> bool:
        return bool(self.token_ids)


def plan_jump_forward(grammar: CompiledGrammar, tail_ids: list[int],
                      tail_start_state: int) -> JumpForward:
    """Plan a jump from the state after ``tail_ids`` (the last committed tokens, which may be
    rolled back); ``tail_start_state`` is the DFA state before them."""
    tb = grammar.vocab.token_bytes
    tail_ids = list(tail_ids)
    # Start the tail on a character boundary (a token may end mid-character).
    while tail_ids and (tb[tail_ids[0]][:1] or b"\x00")[0] & 0xC0 == 0x80:
        tail_start_state = grammar.next_state(tail_start_state, tail_ids.pop(0))
    state = tail_start_state
    for t in tail_ids:
        state = grammar.next_state(state, t)
    if state == 0:
        raise ValueError("tail tokens are not accepted by the grammar")
    forced = grammar.forced_bytes(state)
    if not forced:
        return JumpForward(0, [], b"")
    return _plan(grammar, tail_ids, tail_start_state, forced)


def _plan(grammar: CompiledGrammar, tail_ids: list[int], tail_start_state: int,
          forced: bytes) -> JumpForward:
    tb = grammar.vocab.token_bytes
    tail = b"".join(tb[i] for i in tail_ids)
    text = tail + forced
    cut = whole_chars_prefix(text)
    if cut <= len(tail):
        return JumpForward(0, [], forced)
    text = text[:cut]
    ids = grammar.encode(text.decode("utf-8"))
    if not grammar.vocab.spells(ids, text):
        return JumpForward(0, [], forced)
    p = 0
    while p < min(len(ids), len(tail_ids)) and ids[p] == tail_ids[p]:
        p += 1
    rollback = len(tail_ids) - p
    new_ids = ids[p:]
    offsets = []
    off = sum(len(tb[i]) for i in ids[:p])
    for i in new_ids:
        offsets.append(off)
        off += len(tb[i])
    end_state = grammar.walk(tail_start_state, text)
    live_next = grammar.live_bytes(end_state) if end_state else []
    while new_ids:
        start = offsets[len(new_ids) - 1]
        if not grammar.trie.has_longer_token(text[start:], live_next):
            break
        if start < len(tail):
            return JumpForward(0, [], forced)  # would drop committed text
        new_ids = new_ids[:-1]
    if not new_ids or offsets[len(new_ids) - 1] + len(tb[new_ids[-1]]) <= len(tail):
        return JumpForward(0, [], forced)
    return JumpForward(rollback, list(new_ids), forced)
