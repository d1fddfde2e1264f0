"""Helpers for the scheduling core's unit tests: real pools and caches, no model, no processes."""

from __future__ import annotations

import torch

from radixrt.cache.memory_pool import KVAllocator, ReqToTokenPool
from radixrt.cache.no_cache import NoPrefixCache
from radixrt.cache.radix_cache import RadixCache
from radixrt.sampling_params import SamplingParams
from radixrt.scheduler.kv import RunningKV
from radixrt.scheduler.req import Req

VOCAB = 32  # token i spells chr(ord("a") + i); the last token is EOS
EOS = VOCAB - 1


class CharTokenizer:
    """Token i decodes to one letter; enough for stop strings and incremental text."""

    eos_token_id = EOS

    def decode(self, ids, skip_special_tokens=True, spaces_between_special_tokens=True):
        return "".join("" if (t == EOS and skip_special_tokens) else chr(ord("a") + t) for t in ids)

    def encode(self, text, add_special_tokens=False):
        return [ord(c) - ord("a") for c in text]


def make_kv(size: int = 64, page_size: int = 1, rows: int = 8, context: int = 256,
            radix: bool = True) -> RunningKV:
    alloc = KVAllocator(size, page_size)
    cache = RadixCache(alloc, page_size) if radix else NoPrefixCache(alloc)
    return RunningKV(alloc, ReqToTokenPool(rows, context), cache, page_size)


def make_req(rid: str, prompt: list[int], **params) -> Req:
    return Req(rid=rid, prompt_ids=list(prompt), params=SamplingParams(**params))


def check_slots_add_up(kv: RunningKV, holders: list[Req]) -> None:
    """free + held by running requests + held by the cache == total, and no slot is owned
    twice."""
    acc = kv.accounting(holders)
    assert acc["free"] + acc["running"] + acc["cached"] == acc["total"], acc
    owned = [kv.table[r.row, r.prefix_len:r.kv_len] for r in holders if r.row is not None]
    if owned and kv.page_size == 1:
        flat = torch.cat(owned)
        assert len(torch.unique(flat)) == flat.numel()


def run_extend(batch) -> None:
    """What the extend forward does to the KV bookkeeping: the new tokens are computed."""
    for r, e in zip(batch.reqs, batch.extend_lens):
        r.kv_len += e
