"""SGLang's own frontend as a real client: the programs in ``sglang.test.test_programs``
(installed with ``pip install --no-deps sglang==0.5.23``) run unchanged, through
``sglang.RuntimeEndpoint``, against a real ``radixrt serve`` on the default model.

The programs run in one spawned worker process, not in pytest's: importing ``sglang``
patches ``transformers`` and sets cache environment variables, which must not leak into the
rest of the suite. Without sglang the tests skip, except under CI (``CI`` set), where they
fail so that they can never silently not run.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)

SGLANG_VERSION = "0.5.23"

# test_programs function -> keyword arguments, as SGLang's own test suite passes them
# (test/lang/test_srt_backend.py: test_select(check_answer=False)); the programs assert
# structure (valid JSON, regex matches, message counts, stream metadata), not answer quality.
PROGRAMS = {
    "test_mt_bench": {},
    "test_select": {"check_answer": False},
    "test_decode_json_regex": {},
    "test_decode_json": {},
    "test_parallel_decoding": {},
    "test_stream": {},
    "test_stream_logprobs": {},
    "test_regex": {},
    "test_dtype_gen": {},
}

# ---- worker side (runs in the spawned process) ------------------------------------------

_backend_url: str | None = None


def _probe() -> str:
    """Import what the programs need; the installed sglang version."""
    import sglang
    from sglang.test import test_programs  # noqa: F401

    sglang.RuntimeEndpoint, sglang.set_default_backend  # noqa: B018
    return sglang.__version__


def _run_program(url: str, name: str, kwargs: dict) -> None:
    global _backend_url
    import sglang
    from sglang.test import test_programs

    if _backend_url != url:
        sglang.set_default_backend(sglang.RuntimeEndpoint(url))
        _backend_url = url
    getattr(test_programs, name)(**kwargs)


# ---- pytest side -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sglang_worker():
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        try:
            version = pool.apply_async(_probe).get(180)
        except ImportError as e:
            msg = (f"sglang's frontend is not importable ({type(e).__name__}: {e}); install it "
                   f"with `pip install --no-deps sglang=={SGLANG_VERSION}` after "
                   f"`pip install -e \".[dev]\"` (README)")
            if os.environ.get("CI"):
                pytest.fail(msg, pytrace=False)
            pytest.skip(msg)
        assert version == SGLANG_VERSION, f"sglang {version} installed, tests pin {SGLANG_VERSION}"
        yield pool
    finally:
        pool.terminate()
        pool.join()


@pytest.fixture(scope="module")
def sglang_server(sglang_worker, default_model_dir):
    s = ServerProcess()
    yield s
    s.stop()


@pytest.mark.parametrize("name", list(PROGRAMS), ids=[n.removeprefix("test_") for n in PROGRAMS])
def test_sglang_program(sglang_worker, sglang_server, name):
    # An exception in the worker re-raises here, with the worker's traceback as its cause.
    sglang_worker.apply_async(_run_program, (sglang_server.url, name, PROGRAMS[name])).get(240)
