"""Prometheus metrics for the server (own registry, so several servers can share a process).

Latency histograms are observed in the tokenizer manager as outputs arrive. Scheduler-side
numbers (queue lengths, token counters, prefix-cache hits, KV usage) are read from a
snapshot of the scheduler's server info, refreshed when /metrics is scraped.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)


class _SchedulerCollector:
    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def collect(self):
        info = self.metrics.scheduler_snapshot
        if not info:
            return
        mem = info.get("memory", {})
        stats = info.get("stats", {})
        for name, doc, value in (
            ("radixrt_num_running_reqs", "Requests running (decoding or prefilling).",
             info.get("num_running_reqs", 0)),
            ("radixrt_num_waiting_reqs", "Requests waiting to be scheduled.",
             info.get("num_waiting_reqs", 0)),
            ("radixrt_kv_cache_usage", "Share of KV slots not free (0..1).", mem.get("kv_usage", 0.0)),
            ("radixrt_kv_cache_total_slots", "KV pool size in token slots.", mem.get("kv_total_slots", 0)),
            ("radixrt_cache_hit_rate", "Prompt tokens served from the prefix cache / all prompt tokens.",
             info.get("cache_hit_rate", 0.0)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        slots = GaugeMetricFamily("radixrt_kv_cache_slots", "KV slots by owner.", labels=["state"])
        for state in ("free", "running", "cached"):
            slots.add_metric([state], mem.get(f"kv_{state}_slots", 0))
        yield slots
        for name, doc, key in (
            ("radixrt_prompt_tokens", "Prompt tokens received.", "num_prompt_tokens"),
            ("radixrt_generation_tokens", "Tokens generated.", "num_generated_tokens"),
            ("radixrt_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             "num_prompt_tokens"),
            ("radixrt_prefix_cache_hits", "Prompt tokens found in the prefix cache.", "num_cached_tokens"),
            ("radixrt_prefill_tokens", "Prompt tokens computed by prefill.", "num_prefill_tokens"),
            ("radixrt_retractions", "Requests retracted for lack of KV memory.", "num_retractions"),
            ("radixrt_jump_forward_draft_tokens", "Tokens of grammar-forced text proposed by "
             "jump-forward.", "num_draft_tokens"),
            ("radixrt_jump_forward_accepted_tokens", "Jump-forward tokens kept (the model agreed): "
             "forward passes saved.", "num_accepted_draft_tokens"),
            ("radixrt_canonical_redraws", "Constrained tokens drawn again because the tokenizer "
             "never splits text that way after the previous token.", "num_canonical_redraws"),
            ("radixrt_noncanonical_kept", "Constrained tokens left non-canonical after the last "
             "redraw.", "num_noncanonical_kept"),
        ):
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        yield from _hicache_metrics(info.get("hicache") or {})
        yield from _dp_worker_metrics(info.get("workers") or [])


def _dp_worker_metrics(workers: list[dict[str, Any]]):
    """Under --dp-size N the numbers above are totals; these are per worker (label dp_rank)."""
    if not workers:
        return
    families = [
        (GaugeMetricFamily("radixrt_dp_worker_alive", "1 while the scheduler worker runs.",
                           labels=["dp_rank"]), lambda w: 1 if w.get("alive") else 0),
        (GaugeMetricFamily("radixrt_dp_worker_in_flight", "Requests dispatched to the worker "
                           "and not finished.", labels=["dp_rank"]), lambda w: w.get("in_flight", 0)),
        (CounterMetricFamily("radixrt_dp_worker_dispatched", "Requests dispatched to the worker.",
                             labels=["dp_rank"]), lambda w: w.get("dispatched", 0)),
        (GaugeMetricFamily("radixrt_dp_worker_cache_hit_rate", "The worker's prefix cache hit "
                           "rate.", labels=["dp_rank"]), lambda w: w.get("cache_hit_rate", 0.0)),
        (GaugeMetricFamily("radixrt_dp_worker_num_running_reqs", "Requests running on the worker.",
                           labels=["dp_rank"]), lambda w: w.get("num_running_reqs", 0)),
    ]
    for family, value in families:
        for w in workers:
            family.add_metric([str(w.get("dp_rank", 0))], value(w))
        yield family


def _hicache_metrics(hc: dict[str, Any]):
    """Per-tier numbers of the hierarchical cache (absent when it is off)."""
    if not hc:
        return
    hits = CounterMetricFamily("radixrt_hicache_hit_tokens", "Prompt tokens admitted requests "
                               "found in the cache, by the tier they came from.", labels=["tier"])
    for tier in ("device", "host", "disk"):
        hits.add_metric([tier], hc.get(f"hit_tokens_{tier}", 0))
    yield hits
    tokens = GaugeMetricFamily("radixrt_hicache_tokens", "Tokens of KV the radix tree holds on "
                               "each tier.", labels=["tier"])
    for tier, n in (hc.get("tree_tokens") or {}).items():
        tokens.add_metric([tier], n)
    yield tokens
    moved = CounterMetricFamily("radixrt_hicache_transfer_bytes", "KV bytes moved between tiers.",
                                labels=["path"])
    secs = CounterMetricFamily("radixrt_hicache_transfer_seconds", "Time spent moving KV "
                               "between tiers (disk paths: on the I/O threads).", labels=["path"])
    for path in ("device_to_host", "host_to_device", "disk_write", "disk_read"):
        moved.add_metric([path], hc.get(f"{path}_bytes", 0))
        secs.add_metric([path], hc.get(f"{path}_seconds", 0.0))
    yield moved
    yield secs
    yield CounterMetricFamily("radixrt_hicache_disk_errors", "Disk blocks that could not be "
                              "written or read (full, read-only, missing, corrupt, foreign).",
                              value=hc.get("disk_write_errors", 0) + hc.get("disk_read_errors", 0))
    disk = hc.get("disk") or {}
    yield GaugeMetricFamily("radixrt_hicache_disk_used_bytes", "Bytes of KV blocks on disk.",
                            value=disk.get("used_bytes", 0))
    yield GaugeMetricFamily("radixrt_hicache_host_used_tokens", "Host-tier slots in use.",
                            value=hc.get("host_used_tokens", 0))
    yield CounterMetricFamily("radixrt_hicache_warm_start_tokens", "Tokens of KV the warm start "
                              "read from disk into the pool at start-up.",
                              value=hc.get("warm_start_tokens", 0))


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.scheduler_snapshot: dict[str, Any] = {}
        self.ttft = Histogram("radixrt_time_to_first_token_seconds", "Time to first token.",
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("radixrt_inter_token_latency_seconds", "Time between output tokens.",
                             buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("radixrt_e2e_request_latency_seconds", "Request latency, arrival to finish.",
                             buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.requests = Counter("radixrt_requests", "Finished requests by finish reason.",
                                ["finish_reason"], registry=self.registry)
        self.registry.register(_SchedulerCollector(self))

    def on_finish(self, reason: str, latency: float) -> None:
        self.requests.labels(reason).inc()
        self.e2e.observe(latency)

    def render(self) -> bytes:
        return generate_latest(self.registry)
