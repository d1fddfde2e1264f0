"""The HTTP server: FastAPI app (native SGLang routes + OpenAI routes) and `launch_server`.

`launch_server` starts the scheduler and detokenizer processes, waits until the model is
loaded, then serves with uvicorn on uvloop. Every error is a JSON body
``{"error": {"message", "type", "code"}}``; malformed requests get a 4xx naming the field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import re
import signal
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixrt.config import ServerArgs
from radixrt.entrypoints import native_api, openai_api
from radixrt.entrypoints.protocol import (
    AbortRequest,
    ChatCompletionRequest,
    CompletionRequest,
    FlushCacheRequest,
    GenerateRequest,
)
from radixrt.entrypoints.serving import error_body, error_response
from radixrt.managers.launcher import StartupError
from radixrt.managers.metrics import CONTENT_TYPE
from radixrt.managers.tokenizer_manager import RequestFailed, TokenizerManager
from radixrt.model.loader import ModelLoadError
from radixrt.sampling_params import SamplingParams
from radixrt.version import __version__

logger = logging.getLogger("radixrt.http_server")

MAX_BODY_BYTES = 16 * 2**20
HEALTH_GENERATE_TIMEOUT_S = 60.0
_BODY_TOO_LARGE = "radixrt.body_too_large"
# Union-member tags pydantic puts into error locations ("str", "list[int]", ...).
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|dict|list|tuple|literal|function-\w+)(\[.*\])?$",
                       re.IGNORECASE)


# ----------------------------------------------------------------- ASGI middleware
async def _send_error(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Every route except /health needs ``Authorization: Bearer <key>``."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            auth = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(auth, self.expected):
                await _send_error(send, 401, "missing or invalid API key (Authorization: Bearer <key>)",
                                  [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


class RequestBodyMiddleware:
    """Refuses bodies over ``limit`` bytes with 413 (by Content-Length or while reading), and
    reads every POST body as JSON, the only format the API takes (so `curl -d` works without
    a Content-Type header)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["method"] == "POST" and headers.get(b"content-type", b"").split(b";")[0] in (
                b"", b"application/x-www-form-urlencoded"):
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_error(send, 400, "invalid Content-Length header")
            if int(length) > self.limit:
                return await _send_error(send, 413, f"request body too large ({int(length)} bytes; "
                                                    f"the limit is {self.limit})")
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    scope[_BODY_TOO_LARGE] = True
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, f"request body too large (the limit is {self.limit} bytes)")


# ----------------------------------------------------------------- error handlers
def _validation_message(exc: RequestValidationError) -> str:
    parts: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body" and not _TYPE_TAG.match(str(x))]
        kind = err.get("type")
        if kind == "json_invalid":
            return f"invalid JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}"
        if kind == "missing" and not loc:
            return "missing request body (a JSON object is expected)"
        parts.setdefault(".".join(loc) or "body", err.get("msg", "invalid"))
    return "; ".join(f"{path}: {msg}" for path, msg in list(parts.items())[:4])


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        return error_response(400, _validation_message(exc))

    @app.exception_handler(RequestFailed)
    async def on_failed(request: Request, exc: RequestFailed):
        return error_response(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        if request.scope.get(_BODY_TOO_LARGE):
            return error_response(413, f"request body too large (the limit is {MAX_BODY_BYTES} bytes)")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------- app
def create_app(tm: TokenizerManager) -> FastAPI:
    """The app for a started TokenizerManager; set ``app.state.server`` (a uvicorn Server) to
    have the URL logged once it listens."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await tm.start_loops()
        server = getattr(app.state, "server", None)
        announce = asyncio.ensure_future(_announce(tm, server)) if server is not None else None
        yield
        if announce is not None:
            announce.cancel()
        await tm.shutdown()

    app = FastAPI(title="radixrt", version=__version__, lifespan=lifespan)
    _install_error_handlers(app)
    app.add_middleware(RequestBodyMiddleware)
    if tm.args.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=tm.args.api_key)

    @app.get("/health")
    async def health():
        if tm.dead is not None:
            return error_response(503, f"unhealthy: {tm.dead}")
        return {"status": "ok"}

    @app.get("/health_generate")
    async def health_generate():
        ids = tm.tokenizer.encode("ping")[:1] or [0]
        call = tm.submit(tm.make_samples([ids], [SamplingParams(max_new_tokens=1, temperature=0)]))
        try:
            await asyncio.wait_for(call.wait_done(), HEALTH_GENERATE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise RequestFailed("a one-token generation did not finish in time", 503) from None
        finally:
            call.close()
        if call.error() is not None:
            raise call.error()
        return {"status": "ok"}

    async def model_info():
        return {"model_path": tm.args.model_path or tm.model_info["model_dir"],
                "tokenizer_path": tm.args.tokenizer_path or tm.model_info["model_dir"],
                "is_generation": True, "served_model_name": tm.served_model_name,
                "context_length": tm.context_len, "vocab_size": tm.vocab_size}

    # sglang-router asks /model_info first and falls back to /get_model_info.
    app.get("/get_model_info")(model_info)
    app.get("/model_info")(model_info)

    async def server_info():
        info = await tm.server_info()
        args = dataclasses.asdict(tm.args)
        if args.get("api_key"):
            args["api_key"] = "<hidden>"
        return {**args, "version": __version__, "model_info": tm.model_info,
                "served_model_name": tm.served_model_name, "pids": tm.children.pids(), **info}

    app.get("/get_server_info")(server_info)
    app.get("/server_info")(server_info)

    @app.get("/get_load")
    async def get_load():
        # SGLang's shape, one entry per data-parallel rank; sglang-router sums num_tokens for
        # its power_of_two policy and /get_loads: KV held by running requests plus the prompt
        # tokens still waiting, as SGLang counts them.
        info = await tm.server_info()
        ranks = [w for w in info.get("workers", [info]) if "memory" in w]  # --dp-size: live ones
        return [{"dp_rank": w.get("dp_rank", 0),
                 "num_reqs": w["num_running_reqs"] + w["num_waiting_reqs"],
                 "num_waiting_reqs": w["num_waiting_reqs"],
                 "num_tokens": w["memory"]["kv_running_slots"] + w["num_waiting_tokens"]}
                for w in ranks]

    @app.post("/flush_cache")
    async def flush_cache(body: FlushCacheRequest | None = None):
        out = await tm.flush_cache()
        if not out.success:
            return error_response(400, out.message)
        return {"success": True, "message": out.message}

    @app.post("/abort_request")
    async def abort_request(body: AbortRequest):
        if not body.rid and not body.abort_all:
            raise RequestFailed("rid: required (or abort_all: true)")
        return {"aborted": tm.abort_request(body.rid, body.abort_all)}

    @app.get("/metrics")
    async def metrics():
        try:
            await tm.server_info(timeout=2.0)
        except RequestFailed:
            pass  # serve the last snapshot
        return Response(tm.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request):
        return await native_api.generate(tm, body, request)

    @app.get("/v1/models")
    async def models():
        return openai_api.list_models(tm)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await openai_api.completions(tm, body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await openai_api.chat_completions(tm, body, request)

    return app


async def _announce(tm: TokenizerManager, server) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    a = tm.args
    logger.info("radixrt %s serving %s at http://%s:%d (context %d, KV pool %d tokens)", __version__,
                tm.served_model_name, a.host, a.port, tm.context_len, tm.model_info["max_total_tokens"])


def launch_server(args: ServerArgs) -> None:
    """Start the child processes, then serve until SIGINT/SIGTERM; children never outlive us."""
    import uvicorn

    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)  # during start-up; uvicorn installs its own later
    tm = TokenizerManager(args)
    try:
        try:
            tm.start()
        except (StartupError, ModelLoadError) as e:
            logger.error("could not start: %s", e)
            raise SystemExit(1) from None
        app = create_app(tm)
        server = uvicorn.Server(uvicorn.Config(
            app, host=args.host, port=args.port, log_level=args.log_level,
            access_log=args.log_level == "debug", loop=_loop_name(), timeout_graceful_shutdown=3))
        app.state.server = server
        server.run()
    finally:
        tm.children.shutdown()


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"
