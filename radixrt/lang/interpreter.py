"""The interpreter: executes a program's expressions against a backend (what the program
sees is `radixrt.lang.state.ProgramState`).

Each program state owns a `StreamExecutor` with one worker thread: `s += gen(...)` queues the
expression and returns at once, reads such as `s["answer"]` wait for the value. Forks get
executors of their own, so their generations run concurrently and the server batches them.

A failed backend call stops the executor; the exception is kept and re-raised by the reads
that needed it (`s[name]`, streaming iterators, `run()`), so a program never waits forever.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import uuid
from typing import Any

from radixrt.lang.chat_template import ChatTemplate
from radixrt.lang.ir import (
    CommitLazy,
    ConcatAndAppend,
    ConstantText,
    Expr,
    ExprList,
    Gen,
    RoleBegin,
    RoleEnd,
    SamplingParams,
    Select,
    VarScopeBegin,
    VarScopeEnd,
)
from radixrt.lang.streaming import merge_meta


class _VarStream:
    """The chunks (text delta, meta delta) of one streamed variable."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, dict[str, Any]]] = []
        self.done = False


class StreamExecutor:
    def __init__(self, backend: Any, arguments: dict[str, Any], default_params: SamplingParams,
                 chat_template: ChatTemplate | None = None, stream: bool = False,
                 num_api_spec_tokens: int | None = None, use_thread: bool = True):
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.arguments = arguments
        self.default_params = default_params
        self.stream = stream
        # Accepted for SGLang compatibility; radixrt's backends do not speculate API calls.
        self.num_api_spec_tokens = num_api_spec_tokens
        self.chat_template = chat_template or backend.get_chat_template()

        self.text_ = ""
        self.messages_: list[dict[str, Any]] = []
        self.variables: dict[Any, Any] = {}
        self.meta_info: dict[Any, Any] = {}
        self.cur_role: str | None = None
        self.cur_role_begin_pos: int | None = None
        self.fork_start_text_pos: int | None = None
        self.error_: BaseException | None = None
        self.is_finished = False

        self._events: dict[Any, threading.Event] = {}
        self._done_vars: set[Any] = set()  # variables whose expression completed
        self._children: list[StreamExecutor] = []  # forks, ended with this state at the latest
        self._streams: dict[Any, _VarStream] = {}
        self._cond = threading.Condition()
        self._ended = False
        self.use_thread = use_thread
        if use_thread:
            self._queue: queue.Queue = queue.Queue()
            ctx = contextvars.copy_context()
            self._worker = threading.Thread(target=ctx.run, args=(self._work,), daemon=True,
                                            name=f"radixrt-lang-{self.sid[:8]}")
            self._worker.start()

    # ------------------------------------------------------------------ queue
    def submit(self, expr: Any) -> None:
        if self._ended:
            raise RuntimeError("this program state has ended; it takes no more expressions")
        self._register(expr)
        if self.use_thread:
            self._queue.put(expr)
        else:
            self._execute(expr)

    def sync(self) -> None:
        if self.use_thread:
            self._queue.join()

    def end(self) -> None:
        """No more expressions: the worker finishes the queue, then exits."""
        if self._ended:
            return
        self._ended = True
        if self.use_thread:
            self._queue.put(None)
        else:
            self._finish()

    def _work(self) -> None:
        while True:
            expr = self._queue.get()
            try:
                if expr is None:
                    self._finish()
                    return
                if self.error_ is None:
                    try:
                        self._execute(expr)
                    except Exception as e:
                        self.record_error(e)
            finally:
                self._queue.task_done()
                with self._cond:
                    self._cond.notify_all()

    def record_error(self, error: BaseException) -> None:
        """Stop executing and wake everything that waits on this state."""
        with self._cond:
            if self.error_ is None:
                self.error_ = error
            for ev in self._events.values():
                ev.set()
            for vs in self._streams.values():
                vs.done = True
            self._cond.notify_all()

    def _finish(self) -> None:
        for child in self._children:  # forks the program never joined
            child.end()
        self._children.clear()
        with self._cond:
            self.is_finished = True
            for vs in self._streams.values():
                vs.done = True
            for ev in self._events.values():
                ev.set()
            self._cond.notify_all()

    def _register(self, expr: Any) -> None:
        """Create the wait events of the variables an expression will set."""
        if isinstance(expr, (Gen, Select, VarScopeBegin)):
            self._events[expr.name] = threading.Event()
            self._done_vars.discard(expr.name)
            if self.stream and not isinstance(expr, VarScopeBegin):
                with self._cond:
                    self._streams[expr.name] = _VarStream()
                    self._cond.notify_all()
        elif isinstance(expr, ExprList):
            for e in expr.exprs:
                self._register(e)

    # ------------------------------------------------------------------ reads
    def get_var(self, name: Any) -> Any:
        ev = self._events.get(name)
        if ev is not None:
            ev.wait()
        if name in self.variables and (ev is None or name in self._done_vars):
            return self.variables[name]
        if self.error_ is not None:
            raise self.error_
        raise KeyError(f"program has no variable {name!r}")

    def set_var(self, name: Any, value: Any) -> None:
        self.variables[name] = value

    def get_meta_info(self, name: Any, timeout: float | None = None) -> Any:
        ev = self._events.get(name)
        if ev is not None and not ev.wait(timeout):
            raise TimeoutError(f"timed out waiting for variable {name!r}")
        return self.meta_info.get(name)

    def text(self) -> str:
        self.sync()
        return self.text_

    def messages(self) -> list[dict[str, Any]]:
        self.sync()
        return self.messages_

    def error(self) -> BaseException | None:
        self.sync()
        return self.error_

    def fork(self, size: int = 1) -> list[StreamExecutor]:
        size = int(size)
        if size > 1:
            self.submit(CommitLazy())  # cache the shared prefix once before the branches fan out
        self.sync()
        if self.error_ is not None:
            raise self.error_
        children = []
        for _ in range(size):
            child = StreamExecutor(self.backend, self.arguments, self.default_params,
                                   self.chat_template, self.stream, use_thread=self.use_thread)
            child.variables = dict(self.variables)
            child.meta_info = dict(self.meta_info)
            child.text_ = self.text_
            child.messages_ = list(self.messages_)
            child.cur_role = self.cur_role
            child.cur_role_begin_pos = self.cur_role_begin_pos
            child.fork_start_text_pos = len(self.text_)
            children.append(child)
        self._children.extend(children)
        return children

    # ------------------------------------------------------------------ execution
    def _execute(self, expr: Any) -> None:
        if isinstance(expr, str):
            self._fill(expr)
        elif isinstance(expr, ConstantText):
            self._fill(expr.value)
        elif isinstance(expr, ExprList):
            for e in expr.exprs:
                self._execute(e)
        elif isinstance(expr, Gen):
            self._gen(expr)
        elif isinstance(expr, Select):
            self._select(expr)
        elif isinstance(expr, RoleBegin):
            self._role_begin(expr.role)
        elif isinstance(expr, RoleEnd):
            self._role_end(expr.role)
        elif isinstance(expr, VarScopeBegin):
            self.variables[expr.name] = len(self.text_)
        elif isinstance(expr, VarScopeEnd):
            self.variables[expr.name] = self.text_[self.variables[expr.name]:]
            self._done(expr.name)
        elif isinstance(expr, CommitLazy):
            if self.text_:
                self.backend.commit_lazy_operations(self)
        elif isinstance(expr, ConcatAndAppend):
            self._concat_and_append(expr.states)
        elif isinstance(expr, Expr):
            expr.execute(self)
        else:
            raise TypeError(f"cannot append a {type(expr).__name__} to a program; use a str or an "
                            "expression such as gen(...) or select(...)")

    def _done(self, name: Any) -> None:
        self._done_vars.add(name)
        self._events[name].set()

    def _fill(self, value: str) -> None:
        with self._cond:
            self.text_ += str(value)
            self._cond.notify_all()

    def resolve_params(self, params: SamplingParams) -> SamplingParams:
        """run() defaults, overridden by the gen's own settings, plus the chat stop strings."""
        out = params.merged_over(self.default_params)
        out.resolve_dtype()
        if self.chat_template.stop_str:
            stop = out.stop_list()
            out.stop = stop + [s for s in self.chat_template.stop_str if s not in stop]
        return out

    def _gen(self, expr: Gen) -> None:
        params = self.resolve_params(expr.sampling_params)
        name = expr.name
        if not self.stream:
            comp, meta = self.backend.generate(self, params)
            self._fill(comp[0] if isinstance(comp, list) else comp)
            self.variables[name] = comp
            self.meta_info[name] = meta
            self._done(name)
            return
        vs = self._streams[name]
        self.variables[name] = ""
        full: dict[str, Any] | None = None
        for delta, meta in self.backend.generate_stream(self, params):
            full = merge_meta(full, meta)
            with self._cond:
                self.text_ += delta
                self.variables[name] += delta
                self.meta_info[name] = full
                vs.chunks.append((delta, meta))
                self._cond.notify_all()
        with self._cond:
            vs.done = True
            self._done(name)
            self._cond.notify_all()

    def _select(self, expr: Select) -> None:
        decision = self.backend.select(self, expr.choices, expr.temperature, expr.choices_method)
        self._fill(decision.decision)
        with self._cond:
            self.variables[expr.name] = decision.decision
            self.meta_info[expr.name] = decision.meta_info
            vs = self._streams.get(expr.name)
            if vs is not None:
                vs.chunks.append((decision.decision, {}))
                vs.done = True
            self._done(expr.name)
            self._cond.notify_all()

    def _role_begin(self, role: str) -> None:
        if self.cur_role is not None:
            raise ValueError(f"role {role!r} begins inside role {self.cur_role!r}; roles do not nest")
        if not self.messages_ and role != "system" and self.chat_template.default_system_prompt:
            self._role_begin("system")
            self._fill(self.chat_template.default_system_prompt)
            self._role_end("system")
        self.cur_role = role
        prefix, _ = self.chat_template.get_prefix_and_suffix(role, self.messages_)
        self._fill(prefix)
        self.cur_role_begin_pos = len(self.text_)

    def _role_end(self, role: str) -> None:
        if self.cur_role != role:
            raise ValueError(f"role {role!r} ends but the open role is {self.cur_role!r}")
        content = self.text_[self.cur_role_begin_pos:].lstrip()
        _, suffix = self.chat_template.get_prefix_and_suffix(role, self.messages_)
        self.cur_role = None
        self.cur_role_begin_pos = None
        self._fill(suffix)
        self.messages_.append({"role": role, "content": content})

    def _concat_and_append(self, states: list[Any]) -> None:
        pieces = []
        for st in states:
            ex = st.stream_executor
            ex.sync()
            if ex.error_ is not None:
                raise ex.error_
            pieces.append(ex.text_[ex.fork_start_text_pos:])
        self._fill("".join(pieces))

    def __del__(self) -> None:
        try:
            self.end()
        except Exception:
            pass
