"""What a program sees: `ProgramState` (the ``s`` of a program) and the group of states
returned by `s.fork(n)`. Every operation goes through the state's `StreamExecutor`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from radixrt.lang.ir import (
    ConcatAndAppend,
    Expr,
    ExprList,
    RoleBegin,
    RoleEnd,
    VarScopeBegin,
    VarScopeEnd,
    as_expr,
)
from radixrt.lang.streaming import merge_meta

if TYPE_CHECKING:
    from radixrt.lang.interpreter import StreamExecutor


class ProgramState:
    """What a program function receives as ``s``."""

    def __init__(self, stream_executor: StreamExecutor):
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    def _role(self, role: str, expr: Any = None):
        if expr is not None:
            role_expr = ExprList([RoleBegin(role), as_expr(expr), RoleEnd(role)])
            self.stream_executor.submit(role_expr)
            return role_expr

        @contextmanager
        def scope():
            self.stream_executor.submit(RoleBegin(role))
            yield self
            self.stream_executor.submit(RoleEnd(role))

        return scope()

    def system(self, expr: Any = None):
        return self._role("system", expr)

    def user(self, expr: Any = None):
        return self._role("user", expr)

    def assistant(self, expr: Any = None):
        return self._role("assistant", expr)

    @contextmanager
    def var_scope(self, name: str):
        self.stream_executor.submit(VarScopeBegin(name))
        yield self
        self.stream_executor.submit(VarScopeEnd(name))

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ProgramStateGroup:
        return ProgramStateGroup([ProgramState(e) for e in self.stream_executor.fork(size)], self)

    @contextmanager
    def copy(self, position_ids_offset: Any = None):
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    def text(self) -> str:
        return self.stream_executor.text()

    def messages(self) -> list[dict[str, Any]]:
        return self.stream_executor.messages()

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> BaseException | None:
        return self.stream_executor.error()

    def get_var(self, name: Any) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: Any, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: Any) -> Any:
        return self.stream_executor.get_meta_info(name)

    def text_iter(self, var_name: Any = None, return_meta_data: bool = False) -> Iterator[Any]:
        """Text as it is generated: the whole program's text, or one variable's. With
        ``return_meta_data`` (variables only), yields ``(text, meta_info)`` where the meta's
        output logprob lists hold the tokens new since the previous item."""
        ex = self.stream_executor
        if not ex.stream:
            if var_name is None:
                yield self.text()
            else:
                value = self.get_var(var_name)
                yield (value, self.get_meta_info(var_name)) if return_meta_data else value
            return
        if var_name is None:
            yield from self._whole_text_iter()
        else:
            yield from self._var_iter(var_name, return_meta_data)

    def _whole_text_iter(self) -> Iterator[str]:
        ex = self.stream_executor
        pos = 0
        while True:
            with ex._cond:
                ex._cond.wait_for(lambda pos=pos: len(ex.text_) > pos or ex.is_finished or ex.error_ is not None)
                out = ex.text_[pos:]
                done = ex.is_finished or ex.error_ is not None
            pos += len(out)
            if out:
                yield out
            if done:
                break
        if ex.error_ is not None:
            raise ex.error_

    def _var_iter(self, name: Any, with_meta: bool) -> Iterator[Any]:
        ex = self.stream_executor
        with ex._cond:
            ex._cond.wait_for(lambda: name in ex._streams or ex.is_finished or ex.error_ is not None)
            vs = ex._streams.get(name)
        if vs is None:
            if ex.error_ is not None:
                raise ex.error_
            return
        i = 0
        pending: dict[str, Any] | None = None
        while True:
            with ex._cond:
                ex._cond.wait_for(lambda i=i: len(vs.chunks) > i or vs.done)
                chunks = vs.chunks[i:]
                done = vs.done
            i += len(chunks)
            for text, meta in chunks:
                if with_meta:
                    pending = merge_meta(pending, meta)
                    if text:
                        yield text, pending
                        pending = None
                elif text:
                    yield text
            if done:
                break
        if with_meta and pending is not None:
            yield "", pending
        if ex.error_ is not None and name not in ex._done_vars:
            raise ex.error_

    async def text_async_iter(self, var_name: Any = None,
                              return_meta_data: bool = False) -> AsyncIterator[Any]:
        import asyncio  # here: importing asyncio costs more than the rest of the frontend

        loop = asyncio.get_running_loop()
        it = self.text_iter(var_name, return_meta_data)
        end = object()
        while True:
            item = await loop.run_in_executor(None, next, it, end)
            if item is end:
                return
            yield item

    def __iadd__(self, other: Any) -> ProgramState:
        if other is None:
            raise ValueError("tried to append None to a program state")
        self.stream_executor.submit(other)
        return self

    def __getitem__(self, name: Any) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: Any, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: Any) -> bool:
        return name in self.stream_executor.variables

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ProgramStateGroup:
    """The states returned by `s.fork(n)`."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState | None = None):
        self.states = states
        self.src_state = src_state

    def join(self, mode: str = "gather_variable") -> None:
        """Wait for every fork. "gather_variable" (default): each variable the forks created
        becomes a list on the parent, one entry per fork. "concate_and_append": the forks'
        new text is appended to the parent's text."""
        if self.src_state is None:
            raise ValueError("this group has no parent state to join into")
        if mode == "gather_variable":
            parent = self.src_state.stream_executor
            parent.sync()
            known = set(parent.variables)
            for st in self.states:
                ex = st.stream_executor
                ex.sync()
                if ex.error_ is not None:
                    raise ex.error_
                for k in ex.variables:
                    if k not in known:
                        parent.variables.setdefault(k, []).append(ex.variables[k])
                        if k in ex.meta_info:
                            parent.meta_info.setdefault(k, []).append(ex.meta_info[k])
        elif mode == "concate_and_append":
            self.src_state += ConcatAndAppend(self.states)
            self.src_state.stream_executor.sync()
            err = self.src_state.stream_executor.error_
            if err is not None:
                raise err
        else:
            raise ValueError(f"invalid join mode {mode!r} (gather_variable or concate_and_append)")
        for st in self.states:
            st.stream_executor.end()

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> ProgramStateGroup:
        if isinstance(other, (Expr, str)):
            for st in self.states:
                st += other
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"got {len(other)} expressions for {len(self.states)} forks")
            for st, e in zip(self.states, other, strict=True):
                st += e
        elif isinstance(other, Callable):
            for i, st in enumerate(self.states):
                st += other(i)
        else:
            raise TypeError(f"cannot append a {type(other).__name__} to forked states")
        return self
