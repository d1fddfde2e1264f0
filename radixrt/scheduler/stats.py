"""Counters of the scheduler's work, reported by /get_server_info, /metrics and the Engine."""

from __future__ import annotations

from dataclasses import dataclass


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
