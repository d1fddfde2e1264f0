"""Random walks through grammars for tests: token walks via masks and byte walks via the DFA."""

from __future__ import annotations

import random
from collections import deque

import numpy as np

from radixrt.fsm import GrammarMatcher
from radixrt.fsm.dfa import ByteDFA


def distance_to_accept(dfa: ByteDFA) -> np.ndarray:
    """Fewest bytes from each state to an accepting state (0 for the dead state is unused)."""
    t = dfa.table
    n = t.shape[0]
    dist = np.full(n, 1 << 30, np.int64)
    preds: list[list[int]] = [[] for _ in range(n)]
    for s in range(1, n):
        for d in set(t[s].tolist()):
            if d:
                preds[d].append(s)
    queue = deque(np.flatnonzero(dfa.accepting).tolist())
    dist[list(queue)] = 0
    while queue:
        s = queue.popleft()
        for p in preds[s]:
            if dist[p] > dist[s] + 1:
                dist[p] = dist[s] + 1
                queue.append(p)
    return dist


def sample_bytes(dfa: ByteDFA, rng: random.Random, budget: int = 40, stop: float = 0.2) -> bytes:
    """A random accepted byte string: random live bytes for ``budget`` steps, then the
    shortest way to acceptance."""
    dist = distance_to_accept(dfa)
    t = dfa.table
    s = dfa.start
    out = bytearray()
    for step in range(100_000):
        if dfa.accepting[s] and (step >= budget or rng.random() < stop):
            return bytes(out)
        live = np.flatnonzero(t[s])
        if not live.size:
            assert dfa.accepting[s]
            return bytes(out)
        if step >= budget:
            best = dist[t[s, live]].min()
            live = live[dist[t[s, live]] == best]
        b = int(rng.choice(live.tolist()))
        out.append(b)
        s = int(t[s, b])
    raise AssertionError("walk did not finish")


def token_walk(grammar, seed: int, jump_forward: bool = False, budget: int = 40,
               max_steps: int = 3000) -> tuple[str, int]:
    """Sample uniformly among allowed tokens for ``budget`` steps, then head for acceptance
    (EOS as soon as allowed). Asserts that some token is always allowed and that the walk ends
    terminated. Returns (text, number of jump-forwards)."""
    rng = random.Random(seed)
    m = GrammarMatcher(grammar)
    out: list[int] = []
    dist = None
    jumps = 0
    eos = set(grammar.eos_token_ids)
    for step in range(max_steps):
        if jump_forward:
            jf = m.jump_forward()
            if jf:
                m.apply_jump_forward(jf)
                del out[len(out) - jf.rollback:]
                out += jf.token_ids
                jumps += 1
        ids = m.allowed_token_ids()
        assert ids, f"dead state after {bytes_of(grammar, out)!r}"
        if step < budget:
            tok = rng.choice(ids)
        else:
            allowed_eos = [i for i in ids if i in eos]
            if allowed_eos:
                tok = allowed_eos[0]
            else:
                if dist is None:
                    dist = distance_to_accept(grammar.dfa)
                cands = rng.sample(ids, min(len(ids), 256))
                scores = [dist[grammar.next_state(m.state, i)] for i in cands]
                best = min(scores)
                tok = rng.choice([c for c, sc in zip(cands, scores, strict=False) if sc == best])
        assert m.accept_token(tok), tok
        if tok in eos:
            break
        out.append(tok)
    assert m.is_terminated()
    return bytes_of(grammar, out).decode("utf-8"), jumps


def bytes_of(grammar, ids: list[int]) -> bytes:
    return b"".join(grammar.vocab.token_bytes[i] for i in ids)


# JSON schemas whose strings reach their length limits (where thousands of tokens end right
# before the forced closing quote: the canonical-split tests walk them).
LENGTH_LIMIT_SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "maxItems": 3,
                                               "items": {"type": "string", "maxLength": 6}}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "array", "items": {"type": "object", "properties": {
        "k": {"type": "string", "minLength": 2, "maxLength": 9}, "v": {"type": "number"}},
        "required": ["k", "v"], "additionalProperties": False}, "maxItems": 2},
]


def walk_states(grammar, rng: random.Random, steps: int = 40) -> list[int]:
    """The states of one random token walk (uniform over the allowed tokens)."""
    m = GrammarMatcher(grammar)
    out = []
    for _ in range(steps):
        if m.is_terminated():
            break
        out.append(m.state)
        m.accept_token(rng.choice(m.allowed_token_ids()))
    return out


def assert_split_verdicts_exact(grammar, states, monkeypatch, where) -> int:
    """At each of ``states``, the allowed tokens with the chunking rules of
    ``canonical_split`` equal those with every verdict from the tokenizer; returns how many
    states were compared."""
    from radixrt.fsm import grammar as grammar_module

    for state in sorted(states):
        fast = grammar.allowed_token_ids(state)
        with monkeypatch.context() as mp:
            mp.setattr(grammar_module.SplitVerdicts, "of", classmethod(lambda cls, v, e: None))
            slow = grammar.allowed_token_ids(state)
        assert np.array_equal(fast, slow), (where, state)
    return len(states)
