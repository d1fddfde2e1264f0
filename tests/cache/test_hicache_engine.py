"""The hierarchical cache under the Engine and the server: the same greedy outputs with the
tiers on and off, and a prefix reused from disk by a new Engine / a restarted server."""

from __future__ import annotations

import time

import httpx
import pytest

from radixrt.entrypoints.engine import Engine
from tests.server.conftest import ServerProcess

GREEDY = {"max_new_tokens": 6, "temperature": 0.0}
# Six 300-token prompts (each 4 whole 64-token blocks + a tail) through a 512-slot KV pool:
# the second round finds its prefixes only on the lower tiers.
PROMPTS = [[(i * 7919 + j * 104729) % 40000 + 10 for j in range(300)] for i in range(6)]


def run(model_dir, **kw) -> tuple[list, list, dict]:
    with Engine(model_path=str(model_dir), max_total_tokens=512, max_running_requests=4,
                **kw) as eng:
        outs, cached = [], []
        for p in PROMPTS + PROMPTS:
            r = eng.generate(input_ids=p, sampling_params=GREEDY)
            outs.append(r["output_ids"])
            cached.append(r["meta_info"]["cached_tokens"])
        stats = eng.get_stats()
        kv = eng.kv_accounting()
        assert kv["free"] + kv["running"] + kv["cached"] == kv["total"] and kv["running"] == 0
    return outs, cached, stats


def test_same_greedy_outputs_with_tiers_on_and_off(tiny_model_dir, tmp_path):
    off, off_cached, _ = run(tiny_model_dir, disable_hierarchical_cache=True)
    on, on_cached, stats = run(tiny_model_dir, hicache_dir=str(tmp_path), hicache_ratio=1.0)
    assert on == off
    assert sum(off_cached) == 0  # the pool alone keeps nothing across the round
    assert all(c >= 256 for c in on_cached[6:])  # the tiers do
    hc = stats["hicache"]
    assert hc["hit_tokens_host"] + hc["hit_tokens_disk"] == sum(on_cached)
    assert stats["num_cached_tokens"] == sum(on_cached)
    # A new Engine on the same folder: the first round already reuses every prefix, with the
    # warm start (the default, a quarter of the pool read at start-up) and without it.
    for ratio in (0.25, 0.0):
        again, again_cached, stats = run(tiny_model_dir, hicache_dir=str(tmp_path), hicache_ratio=1.0,
                                         hicache_warm_start_ratio=ratio)
        assert again == off
        assert all(c >= 256 for c in again_cached)
        hc = stats["hicache"]
        assert hc["hit_tokens_disk"] > 0 and hc["disk_read_errors"] == 0
        assert (hc["warm_start_tokens"] > 0) == (ratio > 0)


def test_no_disk_tier_and_flush(tiny_model_dir, tmp_path):
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=512,
                hicache_storage_backend="none", hicache_dir=str(tmp_path)) as eng:
        for p in PROMPTS[:3]:  # fit in the pool and the host tier together
            eng.generate(input_ids=p, sampling_params=GREEDY)
        r = eng.generate(input_ids=PROMPTS[0], sampling_params=GREEDY)
        assert r["meta_info"]["cached_tokens"] == 299  # the whole prompt, from the host tier
        assert "disk" not in eng.get_stats()["hicache"]
        assert eng.flush_cache()
        hc = eng.get_stats()["hicache"]
        assert hc["tree_tokens"] == {"device": 0, "host": 0, "disk": 0}
        assert hc["host_used_tokens"] == 0
    assert not list(tmp_path.rglob("*.kv"))


def wait_for_blocks(server: ServerProcess, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while server.server_info()["hicache"]["disk"]["blocks"] < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"blocks not written: {server.server_info()['hicache']}")
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_restarted_server_reuses_prefix(tiny_model_dir, tmp_path):
    args = ("--model-path", str(tiny_model_dir), "--hicache-dir", str(tmp_path))
    body = {"input_ids": PROMPTS[0], "sampling_params": GREEDY}
    first = ServerProcess(*args)
    try:
        r = httpx.post(first.url + "/generate", json=body, timeout=60).json()
        assert r["meta_info"]["cached_tokens"] == 0
        wait_for_blocks(first, 4)
    finally:
        first.stop()
    second = ServerProcess(*args)
    try:
        tiers = second.server_info()["hicache"]["tree_tokens"]  # on disk, or warm-started
        assert tiers["disk"] + tiers["device"] >= 256
        again = httpx.post(second.url + "/generate", json=body, timeout=60).json()
        assert again["meta_info"]["cached_tokens"] >= 256
        assert again["output_ids"] == r["output_ids"]
        info = second.server_info()
        assert info["hicache"]["hit_tokens_disk"] >= 256
        metrics = httpx.get(second.url + "/metrics", timeout=30).text
        assert 'radixrt_hicache_hit_tokens_total{tier="disk"}' in metrics
        warm = info["hicache"]["warm_start_tokens"]
        assert f"radixrt_hicache_warm_start_tokens_total {float(warm)}" in metrics
        # /flush_cache clears every tier, the disk's files included.
        assert httpx.post(second.url + "/flush_cache", timeout=30).status_code == 200
        assert second.server_info()["hicache"]["disk"]["blocks"] == 0
    finally:
        second.stop()
    assert not list(tmp_path.rglob("*.kv"))
