"""The scheduler: continuous batching over the prefix cache and KV pools.

One `step()`:
1. admit waiting requests (cache-aware order, KV budget, chunked prefill) and run one extend
   forward for them; otherwise
2. run one decode forward for every running request, evicting cache leaves and, if memory is
   still short, retracting the requests that lose least;
3. sample, check stop conditions, donate finished requests' KV to the prefix cache.

It is process-agnostic: the offline Engine calls it in-process, the server's scheduler
process wraps it in a ZeroMQ loop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import torch

from radixrt.cache.base import BasePrefixCache
from radixrt.cache.no_cache import NoPrefixCache
from radixrt.config import ServerArgs
from radixrt.scheduler.grammar_manager import MAX_CANONICAL_REDRAWS, GrammarManager, grammar_spec
from radixrt.scheduler.detokenize import IncrementalDetokenizer, find_stop, find_stop_regex
from radixrt.scheduler.prefill_adder import RESERVE_CLIP, PrefillAdder
from radixrt.scheduler.req import FinishReason, Req
from radixrt.scheduler.policy import SchedulePolicy
from radixrt.model.forward_batch import ForwardBatch
from radixrt.model.runner import ModelRunner
from radixrt.model.sampler import RequestPenalty, Sampler, SamplingBatchInfo

logger = logging.getLogger("radixrt.scheduler")

# Decode memory reservation: a running request is assumed to still need this share of its
# remaining max_new_tokens. Starts cautious, decays while nothing goes wrong, and jumps back
# up after a retraction.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = 0.001


class RequestError(ValueError):
    """A request that can never be served (too long, invalid); reported to its client."""


@dataclass
class SchedulerStats:
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generated_tokens: int = 0
    num_prefill_tokens: int = 0  # tokens actually computed by extend forwards
    num_forward_steps: int = 0
    num_retractions: int = 0
    num_finished: int = 0
    num_draft_tokens: int = 0  # jump-forward tokens proposed by grammars
    num_accepted_draft_tokens: int = 0  # ... and kept (each one a forward pass saved)
    num_canonical_redraws: int = 0  # constrained tokens drawn again for a non-canonical split
    num_noncanonical_kept: int = 0  # ... still non-canonical after the last redraw

    @property
    def cache_hit_rate(self) -> float:
        return self.num_cached_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0


class Scheduler:
    def __init__(self, args: ServerArgs, runner: ModelRunner, tokenizer):
        self.args = args
        self.runner = runner
        self.tokenizer = tokenizer
        self.allocator = runner.allocator
        self.req_pool = runner.req_to_token_pool
        self.vocab_size = runner.config.vocab_size
        self.context_len = runner.context_len
        self.page_size = args.page_size
        if args.disable_radix_cache:
            self.cache: BasePrefixCache = NoPrefixCache(self.allocator)
        else:
            from radixrt.cache.radix_cache import RadixCache

            self.cache = RadixCache(self.allocator, args.page_size)
        self.policy = SchedulePolicy(args.schedule_policy, self.cache, args.seed)
        self.sampler = Sampler()
        self.eos_ids = set(runner.config.eos_token_ids)
        if getattr(tokenizer, "eos_token_id", None) is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.chunked: Req | None = None  # request whose prompt is being prefilled in chunks
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO * args.schedule_conservativeness
        self.stats = SchedulerStats()
        self._default_gen = torch.Generator().manual_seed(args.seed)
        self._aborted: list[Req] = []  # finished outside a forward (e.g. out of memory)
        self.grammars = GrammarManager(tokenizer, self.vocab_size, self.eos_ids,
                                       args.constrained_json_whitespace_pattern,
                                       jump_forward=not args.disable_jump_forward,
                                       canonical_tokens=not args.disable_canonical_tokens)

    # ------------------------------------------------------------------ intake
    def add_request(self, req: Req) -> None:
        n = len(req.prompt_ids)
        if n == 0:
            raise RequestError("the prompt is empty")
        if n >= self.context_len:
            raise RequestError(
                f"the prompt has {n} tokens, the model's context length is {self.context_len}")
        if n + 1 > self.allocator.size:
            raise RequestError(
                f"the prompt has {n} tokens but the KV pool holds only {self.allocator.size}")
        bad = [t for t in req.prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"input_ids: token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        p = req.params
        if p.seed is not None:
            req.generator = torch.Generator().manual_seed(p.seed)
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            req.penalty = RequestPenalty(req.prompt_ids, self.vocab_size)
        if p.stop or p.stop_regex:
            req.stop_detok = IncrementalDetokenizer(self.tokenizer, p.skip_special_tokens)
        spec = grammar_spec(req)
        if spec is not None:
            try:
                self.grammars.submit(req, *spec)
            except ValueError as e:
                raise RequestError(str(e)) from None
        else:
            self.waiting.append(req)
        self.stats.num_prompt_tokens += n

    def abort_request(self, rid: str) -> Req | None:
        req = self.grammars.abort(rid)
        if req is not None:
            return req
        for req in list(self.waiting):
            if req.rid == rid:
                self.waiting.remove(req)
                req.finished = FinishReason("abort", message="aborted")
                return req
        for req in self.running + ([self.chunked] if self.chunked else []):
            if req.rid == rid and req.finished is None:
                req.finished = FinishReason("abort", message="aborted")
                self._release(req)
                if req is self.chunked:
                    self.chunked = None
                else:
                    self.running.remove(req)
                return req
        return None

    def flush_cache(self) -> bool:
        """Drop the prefix cache; only possible when idle."""
        if self.running or self.waiting or self.chunked:
            return False
        self.cache.reset()
        return True

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked or self.grammars.pending)

    def close(self) -> None:
        """Stop the grammar compiler's threads (pending compiles are cancelled)."""
        self.grammars.close()

    # ------------------------------------------------------------------ memory
    def alloc_slots(self, n: int, last_slot: int | None = None) -> torch.Tensor | None:
        slots = self.allocator.alloc(n, last_slot)
        if slots is None:
            self.cache.evict(n + self.page_size)
            slots = self.allocator.alloc(n, last_slot)
        return slots

    def reserved_for_running(self) -> float:
        return sum(min(r.remaining_new_tokens(), RESERVE_CLIP) for r in self.running) * self.new_token_ratio

    def kv_accounting(self) -> dict[str, int]:
        held = 0
        for r in self.running + ([self.chunked] if self.chunked else []):
            held += self._held_slots(r)
        return {
            "total": self.allocator.size,
            "free": self.allocator.available_size(),
            "running": held,
            "cached": self.cache.total_size(),
        }

    def _held_slots(self, req: Req) -> int:
        """Slots owned by ``req`` itself (not by the cache), counted in whole pages."""
        if req.row is None or req.kv_len <= req.prefix_len:
            return 0
        ps = self.page_size
        own = self.req_pool.req_to_token[req.row, req.prefix_len:req.kv_len]
        return len(torch.unique(own // ps)) * ps if ps > 1 else own.numel()

    def _release(self, req: Req) -> None:
        """Give a request's KV to the cache (or the allocator) and free its row."""
        if req.row is None:
            return
        slots = self.req_pool.req_to_token[req.row, :req.kv_len].clone()
        self.cache.cache_finished_req(req.fill_ids[:req.kv_len], slots, req.prefix_len, req.last_node)
        self.req_pool.free(req.row)
        req.row, req.kv_len, req.prefix_len, req.last_node = None, 0, 0, None
        req.draft_ids = []

    def _share_progress(self, req: Req) -> None:
        """Insert a running request's computed tokens into the cache so others can share them."""
        if isinstance(self.cache, NoPrefixCache):
            return
        slots = self.req_pool.req_to_token[req.row, :req.kv_len].clone()
        m = self.cache.cache_unfinished_req(req.fill_ids[:req.kv_len], slots, req.prefix_len, req.last_node)
        n = len(m.indices)
        self.req_pool.req_to_token[req.row, :n] = m.indices
        req.prefix_len, req.last_node = n, m.last_node

    # ------------------------------------------------------------------ step
    def step(self) -> list[Req]:
        """Run one forward. Returns the requests that got new output or finished."""
        if self.grammars.pending:
            idle = not (self.waiting or self.running or self.chunked)
            ready, failed = self.grammars.poll(block=idle)
            self.waiting.extend(ready)
            self._aborted.extend(failed)
        adder = PrefillAdder(self)
        batch = adder.build()
        if batch:
            touched = self._run_extend(batch, adder.extend_lens)
        elif self.running:
            touched = self._run_decode()
        else:
            touched = []
        if self._aborted:
            touched = self._aborted + touched
            self._aborted = []
        return touched

    def _run_extend(self, batch: list[Req], extend_lens: list[int]) -> list[Req]:
        input_ids: list[int] = []
        seq_lens: list[int] = []
        logits_rows: list[int] = []
        sample_rows: list[tuple[Req, int]] = []
        prompt_lp_rows: list[tuple[Req, int, int, int]] = []  # req, first row, first token, count
        off = 0
        for req, e in zip(batch, extend_lens):
            start = req.kv_len
            end = start + e
            input_ids.extend(req.fill_ids[start:end])
            seq_lens.append(end)
            if req.wants_prompt_logprobs and not req.input_token_logprobs_done:
                if start == 0 and req.logprob_start_len == 0 and not req.input_token_logprobs:
                    # The first prompt token has no logprob (SGLang reports None), even when
                    # it is the whole prompt and no logits row is needed.
                    req.input_token_logprobs.append((None, req.prompt_ids[0]))
                    if req.top_logprobs_num:
                        req.input_top_logprobs.append(None)
                # Logits at position p predict token p + 1.
                lo = max(start, req.logprob_start_len - 1, 0)
                hi = min(end, len(req.prompt_ids) - 1)
                if hi > lo:
                    prompt_lp_rows.append((req, len(logits_rows), lo + 1, hi - lo))
                    logits_rows.extend(range(off + lo - start, off + hi - start))
            if end == req.seq_len:
                sample_rows.append((req, len(logits_rows)))
                logits_rows.append(off + e - 1)
            off += e
        out_loc = torch.cat([self.req_pool.req_to_token[r.row, r.kv_len:r.kv_len + e]
                             for r, e in zip(batch, extend_lens)])
        fb = ForwardBatch.build(input_ids, seq_lens, extend_lens, out_loc, self.req_pool.req_to_token,
                                [r.row for r in batch], logits_rows)
        logits = self.runner.forward(fb)
        self.stats.num_forward_steps += 1
        self.stats.num_prefill_tokens += len(input_ids)
        for req, e in zip(batch, extend_lens):
            req.kv_len += e
        self._record_prompt_logprobs(logits, prompt_lp_rows, batch)
        touched: list[Req] = []
        samplers = [r for r, _ in sample_rows]
        if samplers:
            rows = torch.tensor([i for _, i in sample_rows])
            zero = [r for r in samplers if r.params.max_new_tokens == 0 or r.remaining_new_tokens() == 0]
            self._sample_and_advance([r for r in samplers if r not in zero], logits, rows, samplers)
            for r in zero:
                r.finished = FinishReason("length", matched=None)
        for req in batch:
            if req.finished is not None:
                self._release(req)
                self.stats.num_finished += 1
                touched.append(req)
            elif req in samplers:
                self._share_progress(req)
                self.running.append(req)
                touched.append(req)
            else:
                self._share_progress(req)  # an unfinished chunk: shareable already
        return touched

    def _record_prompt_logprobs(self, logits, prompt_lp_rows, batch) -> None:
        logp = torch.log_softmax(logits, dim=-1) if prompt_lp_rows else None
        for req, row0, tok0, count in prompt_lp_rows:
            toks = req.prompt_ids[tok0:tok0 + count]
            rows = logp[row0:row0 + count]
            vals = rows.gather(1, torch.tensor(toks).unsqueeze(1)).squeeze(1).tolist()
            req.input_token_logprobs.extend(zip(vals, toks))
            if req.top_logprobs_num:
                v, i = rows.topk(req.top_logprobs_num, dim=-1)
                req.input_top_logprobs.extend(list(zip(a, b)) for a, b in zip(v.tolist(), i.tolist()))
        for req in batch:
            if req.wants_prompt_logprobs and req.kv_len >= len(req.prompt_ids):
                req.input_token_logprobs_done = True

    def _run_decode(self) -> list[Req]:
        """One forward for every running request: usually one new token each, several after a
        jump-forward appended forced tokens."""
        self._ensure_decode_memory()
        if not self.running:
            return []
        batch = self.running
        table = self.req_pool.req_to_token
        fresh = [r.seq_len - r.kv_len for r in batch]  # usually 1: the last sampled token
        ext = [n + len(r.draft_ids) for r, n in zip(batch, fresh)]
        out_loc = []
        input_ids: list[int] = []
        logits_rows: list[int] = []
        first_row: list[int] = []
        off = 0
        for req, n, e in zip(batch, fresh, ext):
            last = int(table[req.row, req.kv_len - 1])
            slots = self.allocator.alloc(e, last)
            if slots is None:  # _ensure_decode_memory made room; this cannot happen
                raise RuntimeError("KV allocation failed after reserving decode memory")
            table[req.row, req.kv_len:req.kv_len + e] = slots
            out_loc.append(slots)
            input_ids.extend(req.fill_ids[req.kv_len:])
            input_ids.extend(req.draft_ids)
            # Logits after the last committed token, then after each draft token.
            first_row.append(len(logits_rows))
            logits_rows.extend(range(off + n - 1, off + e))
            off += e
        fb = ForwardBatch.build(input_ids, [r.kv_len + e for r, e in zip(batch, ext)], ext,
                                torch.cat(out_loc), table, [r.row for r in batch], logits_rows)
        logits = self.runner.forward(fb)
        self.stats.num_forward_steps += 1
        for req, n in zip(batch, fresh):
            req.kv_len += n
        # Requests without a draft are sampled together first (which proposes their next
        # drafts); the others are verified one by one.
        plain = [i for i, (e, n) in enumerate(zip(ext, fresh)) if e == n]
        if plain:
            reqs = [batch[i] for i in plain]
            self._sample_and_advance(reqs, logits, torch.tensor([first_row[i] for i in plain]), reqs)
        for i, (e, n) in enumerate(zip(ext, fresh)):
            if e > n:
                self._verify_draft(batch[i], logits, first_row[i])
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)
        done = [r for r in batch if r.finished is not None]
        for req in done:
            self._release(req)
            self.stats.num_finished += 1
        if done:
            self.running = [r for r in batch if r.finished is None]
        return list(batch)

    def _ensure_decode_memory(self) -> None:
        """Make room for one more token per running request: evict, then retract."""
        def needed() -> int:
            ps = self.page_size
            total = 0
            for r in self.running:
                n = r.seq_len - r.kv_len + len(r.draft_ids) - (-r.kv_len) % ps  # beyond the last page's free tail
                total += -(-max(n, 0) // ps) * ps
            return total

        if self.allocator.available_size() >= needed():
            return
        for r in self.running:  # drafts are optional: drop them before evicting anything
            r.draft_ids = []
        if self.allocator.available_size() >= needed():
            return
        self.cache.evict(needed() - self.allocator.available_size())
        while self.allocator.available_size() < needed() and self.running:
            if len(self.running) == 1:
                req = self.running.pop()
                req.finished = FinishReason("abort", message="out of KV cache memory: the request "
                                            "does not fit in --max-total-tokens")
                self._release(req)
                self.stats.num_finished += 1
                self._aborted.append(req)
                break
            # Retract the request that has produced the least: it loses least, and its KV
            # goes to the cache so it can resume from there.
            victim = min(self.running, key=lambda r: (len(r.output_ids), -len(r.prompt_ids)))
            self.running.remove(victim)
            self._release(victim)
            victim.num_retractions += 1
            self.stats.num_retractions += 1
            self.waiting.appendleft(victim)
            self.cache.evict(max(0, needed() - self.allocator.available_size()))
            self.new_token_ratio = min(1.0, max(self.new_token_ratio, 0.5) + 0.2)
            logger.debug("retracted %s (%d output tokens)", victim.rid, len(victim.output_ids))

    # ------------------------------------------------------------------ sampling
    def _sample_and_advance(self, reqs: list[Req], logits: torch.Tensor, rows: torch.Tensor,
                            all_reqs: list[Req], propose: bool = True) -> None:
        if not reqs:
            return
        index = {id(r): i for i, r in enumerate(all_reqs)}
        sel = rows[[index[id(r)] for r in reqs]]
        lg = logits.index_select(0, sel.to(logits.device))
        suppress = []
        for r in reqs:
            if len(r.output_ids) < r.params.min_new_tokens:
                ids = [] if r.params.ignore_eos else sorted(self.eos_ids)
                suppress.append(ids + list(r.params.stop_token_ids))
            else:
                suppress.append([])
        self.grammars.apply_masks(reqs, lg)
        tops = [r.top_logprobs_num if r.return_logprob else 0 for r in reqs]
        ids, lps, top = self._draw(reqs, lg, suppress, tops)
        self._redraw_noncanonical(reqs, lg, suppress, tops, ids, lps, top)
        for i, (req, tok) in enumerate(zip(reqs, ids)):
            req.output_ids.append(tok)
            self.stats.num_generated_tokens += 1
            if req.first_token_time is None:
                req.first_token_time = time.perf_counter()
            if req.penalty is not None:
                req.penalty.update(tok)
            if req.return_logprob:
                req.output_token_logprobs.append((lps[i], tok))
                if req.top_logprobs_num:
                    req.output_top_logprobs.append([(lp, t) for t, lp in top[i]])
            if req.grammar is not None:
                self.grammars.accept(req, tok)
            if req.finished is None:
                self._check_finish(req, tok)
            if propose and req.grammar is not None and req.finished is None:
                self.stats.num_draft_tokens += self.grammars.propose_draft(req)

    def _draw(self, reqs: list[Req], lg: torch.Tensor, suppress: list[list[int]],
              tops: list[int]) -> tuple[list[int], list[float], list[list[tuple[int, float]]]]:
        """One token per row of ``lg`` (already masked): ids, logprobs, top logprobs."""
        info = SamplingBatchInfo.build([r.params for r in reqs], self.vocab_size,
                                       [r.generator for r in reqs],
                                       suppress if any(suppress) else None,
                                       default_generator=self._default_gen)
        out = self.sampler(lg, info, [r.penalty for r in reqs], tops if any(tops) else None)
        top = out.top_logprobs if out.top_logprobs is not None else [[] for _ in reqs]
        return out.next_token_ids.tolist(), out.logprobs.tolist(), top

    def _redraw_noncanonical(self, reqs: list[Req], lg: torch.Tensor, suppress: list[list[int]],
                             tops: list[int], ids: list[int], lps: list[float],
                             top: list[list[tuple[int, float]]]) -> None:
        """Constrained rows whose token splits text where the tokenizer never would (after
        the previous token) draw again without such tokens (``GrammarManager.canonical_bans``),
        from their own generator as any draw; ``ids``, ``lps``, ``top`` are updated in place.
        Logprobs stay those of the model's distribution at the token finally chosen. After
        ``MAX_CANONICAL_REDRAWS`` the token stands (counted in ``num_noncanonical_kept``)."""
        check = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if not check:
            return
        forbidden = [list(s) for s in suppress]
        for attempt in range(MAX_CANONICAL_REDRAWS + 1):
            redo = []
            for i in check:
                bans = self.grammars.canonical_bans(reqs[i], ids[i], lg[i], forbidden[i])
                if bans:
                    forbidden[i].extend(bans)
                    redo.append(i)
            if not redo:
                return
            if attempt == MAX_CANONICAL_REDRAWS:
                self.stats.num_noncanonical_kept += len(redo)
                return
            self.stats.num_canonical_redraws += len(redo)
            sub = [reqs[i] for i in redo]
            index = torch.tensor(redo, device=lg.device)
            r_ids, r_lps, r_top = self._draw(sub, lg.index_select(0, index),
                                             [forbidden[i] for i in redo], [tops[i] for i in redo])
            for j, i in enumerate(redo):
                ids[i], lps[i], top[i] = r_ids[j], r_lps[j], r_top[j]
            check = redo  # the others' tokens stand

    def _verify_draft(self, req: Req, logits: torch.Tensor, row0: int) -> None:
        """Sample position by position over a jump-forward draft (rows ``row0`` .. ``row0 + k``
        of ``logits``), exactly as plain decoding would, keeping draft tokens while the samples
        equal them; free the KV of the draft tokens that were not kept."""
        draft, req.draft_ids = req.draft_ids, []
        k = len(draft)
        n0 = len(req.output_ids)
        kept = 0
        for i in range(k + 1):
            self._sample_and_advance([req], logits, torch.tensor([row0 + i]), [req], propose=False)
            if i == k or req.output_ids[-1] != draft[i]:
                break
            kept += 1
            if req.finished is not None:
                break
        self.stats.num_accepted_draft_tokens += kept
        if kept < k and req.grammar is not None:  # the model left the draft: learn its split
            self.grammars.learn(req, req.draft_state, req.output_ids[n0:])
        # KV was written for all k draft tokens; the first `kept` are committed now.
        table = self.req_pool.req_to_token
        base = req.kv_len
        req.kv_len = base + kept
        dropped = table[req.row, base + kept:base + k].clone()
        if dropped.numel():
            if self.page_size > 1:  # the page holding the last kept slot stays with the request
                keep_page = int(table[req.row, req.kv_len - 1]) // self.page_size
                dropped = dropped[dropped // self.page_size != keep_page]
            self.allocator.free(dropped)
        if req.finished is None and req.grammar is not None:
            self.stats.num_draft_tokens += self.grammars.propose_draft(req)

    def _check_finish(self, req: Req, tok: int) -> None:
        p = req.params
        n_out = len(req.output_ids)
        if n_out >= p.min_new_tokens:
            if tok in p.stop_token_ids:
                req.finished = FinishReason("stop", matched=tok)
                return
            if not p.ignore_eos and tok in self.eos_ids:
                req.finished = FinishReason("stop", matched=tok)
                return
        if req.stop_detok is not None:
            piece = req.stop_detok.add([tok])
            if piece and n_out >= p.min_new_tokens:
                text = req.stop_detok.text
                new_from = len(text) - len(piece)
                i = find_stop(text, p.stop, new_from)
                if i != -1:
                    matched = next(s for s in p.stop if text.startswith(s, i))
                    req.finished = FinishReason("stop", matched=matched)
                    return
                matched = find_stop_regex(text, p.stop_regex, new_from)
                if matched is not None:
                    req.finished = FinishReason("stop", matched=matched)
                    return
        if n_out >= p.max_new_tokens or req.seq_len >= self.context_len:
            req.finished = FinishReason("length")
