"""The scheduler: continuous batching over the prefix cache and KV pools.

One `step()`:
1. requests whose grammar finished compiling join the waiting queue;
2. the prefill adder admits waiting requests (cache-aware order, KV budget, chunked prefill)
   and one extend forward runs for them; otherwise
3. one decode forward runs for every running request, after evicting cache leaves and, if
   memory is still short, retracting the requests that lose least;
4. post-processing samples, verifies drafts and checks stop conditions; finished requests
   donate their KV to the prefix cache.

It is process-agnostic: the offline Engine calls it in-process, the server's scheduler
process wraps it in a ZeroMQ loop. The pieces live beside it: `kv.RunningKV` (slots of
running requests), `prefill_adder.PrefillAdder`, `policy.SchedulePolicy`,
`postprocess.PostProcessor`, `grammar_manager.GrammarManager`, `forward_plan` (ForwardBatch
and logits rows of a step).
"""

from __future__ import annotations

import logging
from collections import deque

import torch

from radixrt.cache.base import BasePrefixCache
from radixrt.cache.factory import make_prefix_cache
from radixrt.config import ServerArgs
from radixrt.model.runner import ModelRunner
from radixrt.model.sampler import RequestPenalty
from radixrt.scheduler.detokenize import IncrementalDetokenizer
from radixrt.scheduler.forward_plan import plan_decode, plan_extend
from radixrt.scheduler.grammar_manager import GrammarManager, grammar_spec
from radixrt.scheduler.kv import RunningKV
from radixrt.scheduler.policy import SchedulePolicy
from radixrt.scheduler.postprocess import PostProcessor
from radixrt.scheduler.prefill_adder import PrefillAdder, PrefillLimits
from radixrt.scheduler.req import FinishReason, Req
from radixrt.scheduler.stats import SchedulerStats

logger = logging.getLogger("radixrt.scheduler")

# Decode memory reservation: a running request is assumed to still need this share of its
# remaining max_new_tokens. Starts cautious, decays while nothing goes wrong, and jumps back
# up after a retraction.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = 0.001


class RequestError(ValueError):
    """A request that can never be served (too long, invalid); reported to its client."""


class Scheduler:
    def __init__(self, args: ServerArgs, runner: ModelRunner, tokenizer):
        self.args = args
        self.runner = runner
        self.tokenizer = tokenizer
        self.vocab_size = runner.config.vocab_size
        self.context_len = runner.context_len
        self.cache: BasePrefixCache = make_prefix_cache(args, runner)
        self.kv = RunningKV(runner.allocator, runner.req_to_token_pool, self.cache, args.page_size)
        self.policy = SchedulePolicy(args.schedule_policy, self.cache, args.seed)
        self.limits = PrefillLimits(args.max_prefill_tokens, args.chunked_prefill_size,
                                    args.max_running_requests, args.page_size)
        eos_ids = set(runner.config.eos_token_ids)
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.grammars = GrammarManager(tokenizer, self.vocab_size, eos_ids,
                                       args.constrained_json_whitespace_pattern,
                                       jump_forward=not args.disable_jump_forward,
                                       canonical_tokens=not args.disable_canonical_tokens,
                                       budget_closing=not args.disable_budget_closing)
        self.grammars.start_warm_up()
        self.stats = SchedulerStats()
        self.post = PostProcessor(self.grammars, eos_ids, self.vocab_size, self.context_len,
                                  self.stats, args.seed)
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.chunked: Req | None = None  # request whose prompt is being prefilled in chunks
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO * args.schedule_conservativeness
        self._aborted: list[Req] = []  # finished outside a forward (e.g. out of memory)

    # ------------------------------------------------------------------ intake
    def add_request(self, req: Req) -> None:
        # Prompts are checked once, where requests enter (tokenizer manager, Engine.generate).
        n = len(req.prompt_ids)
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
                self.kv.release(req)
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

    def kv_accounting(self) -> dict[str, int]:
        return self.kv.accounting(self.running + ([self.chunked] if self.chunked else []))

    def close(self) -> None:
        """Stop the grammar compiler's threads (pending compiles are cancelled) and the
        cache's I/O threads (after their queued disk writes)."""
        self.grammars.close()
        self.cache.close()

    # ------------------------------------------------------------------ step
    def step(self) -> list[Req]:
        """Run one forward. Returns the requests that got new output or finished."""
        if self.grammars.pending:
            idle = not (self.waiting or self.running or self.chunked)
            ready, failed = self.grammars.poll(block=idle)
            self.waiting.extend(ready)
            self._aborted.extend(failed)
        adder = PrefillAdder(self.kv, self.policy, self.limits, self.running, self.new_token_ratio)
        batch = adder.build(self.waiting, self.chunked)
        self.chunked = batch.chunked
        for req in batch.admitted:
            self.waiting.remove(req)
        self.stats.num_cached_tokens += batch.cached_tokens
        if batch.reqs:
            touched = self._run_extend(batch.reqs, batch.extend_lens)
        elif self.running:
            touched = self._run_decode()
        else:
            touched = []
            if self.waiting and self.cache.io_pending():
                self.cache.wait_io(0.05)  # the waiting requests' KV is being read back
        if self._aborted:
            touched = self._aborted + touched
            self._aborted = []
        return touched

    def _finish(self, req: Req) -> None:
        self.kv.release(req)
        self.stats.num_finished += 1

    def _run_extend(self, batch: list[Req], extend_lens: list[int]) -> list[Req]:
        plan = plan_extend(batch, extend_lens, self.kv.table)
        logits = self.runner.forward(plan.forward_batch)
        self.stats.num_forward_steps += 1
        self.stats.num_prefill_tokens += sum(extend_lens)
        for req, e in zip(batch, extend_lens):
            req.kv_len += e
        self.post.record_prompt_logprobs(logits, plan.prompt_logprob_rows)
        for req in batch:
            if req.wants_prompt_logprobs and req.kv_len >= len(req.prompt_ids):
                req.input_token_logprobs_done = True
        samplers = {id(r) for r, _ in plan.sample_rows}  # prompt complete: first token now
        draw = [(r, i) for r, i in plan.sample_rows if r.remaining_new_tokens() > 0]
        self.post.sample_and_advance([r for r, _ in draw], logits, [i for _, i in draw])
        for r, _ in plan.sample_rows:
            if r.finished is None and r.remaining_new_tokens() == 0:
                r.finished = FinishReason("length")  # max_new_tokens == 0
        touched: list[Req] = []
        for req in batch:
            if req.finished is not None:
                self._finish(req)
                touched.append(req)
                continue
            self.kv.share(req)  # an unfinished chunk is shareable already
            if id(req) in samplers:
                self.running.append(req)
                touched.append(req)
        return touched

    def _run_decode(self) -> list[Req]:
        """One forward for every running request: usually one new token each, several after a
        jump-forward appended forced tokens."""
        self._make_decode_room()
        if not self.running:
            return []
        batch = self.running
        plan = plan_decode(batch, self.kv)
        logits = self.runner.forward(plan.forward_batch)
        self.stats.num_forward_steps += 1
        for req, n in zip(batch, plan.fresh):
            req.kv_len += n
        # Requests without a draft are sampled together first (which proposes their next
        # drafts); the others are verified one by one.
        plain = [i for i, r in enumerate(batch) if not plan.drafts[i]]
        self.post.sample_and_advance([batch[i] for i in plain], logits,
                                     [plan.first_row[i] for i in plain])
        for i, draft in enumerate(plan.drafts):
            if draft:
                req = batch[i]
                req.draft_ids = []
                kept = self.post.verify_draft(req, draft, logits, plan.first_row[i])
                self.kv.commit_draft(req, kept, len(draft))
                self.post.propose_draft(req)
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)
        done = [r for r in batch if r.finished is not None]
        for req in done:
            self._finish(req)
        if done:
            self.running = [r for r in batch if r.finished is None]
        return list(batch)

    def _make_decode_room(self) -> None:
        """Make room for the next decode step: drop drafts, evict, then retract."""
        kv = self.kv
        if not kv.decode_shortfall(self.running):
            return
        for r in self.running:  # drafts are optional: drop them before evicting anything
            r.draft_ids = []
        if not kv.decode_shortfall(self.running):
            return
        kv.cache.evict(kv.decode_shortfall(self.running))
        while kv.decode_shortfall(self.running) and self.running:
            if len(self.running) == 1:
                req = self.running.pop()
                req.finished = FinishReason("abort", message="out of KV cache memory: the request "
                                            "does not fit in --max-total-tokens")
                self._finish(req)
                self._aborted.append(req)
                break
            # Retract the request that has produced the least: it loses least, and its KV
            # goes to the cache so it can resume from there.
            victim = min(self.running, key=lambda r: (len(r.output_ids), -len(r.prompt_ids)))
            self.running.remove(victim)
            kv.release(victim)
            victim.num_retractions += 1
            self.stats.num_retractions += 1
            self.waiting.appendleft(victim)
            kv.cache.evict(kv.decode_shortfall(self.running))
            self.new_token_ratio = min(1.0, max(self.new_token_ratio, 0.5) + 0.2)
            logger.debug("retracted %s (%d output tokens)", victim.rid, len(victim.output_ids))
