"""The frontend's one piece of process-wide state: the default backend and a few knobs.

`global_config` is the same object under SGLang's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LangContext:
    default_backend: Any = None
    # 0: quiet; 2: print every program's text when it finishes (SGLang's verbosity).
    verbosity: int = 0
    # run_batch traces the program for the text shared by every call and caches it first.
    enable_precache_with_tracing: bool = True
    # ... but only when that shared prefix is at least this many characters.
    precache_min_chars: int = 64


context = LangContext()
global_config = context
