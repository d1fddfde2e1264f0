"""ChildProcesses under --dp-size: worker names, addresses, thread split, death reports."""

from __future__ import annotations

import pytest

from radixrt.config import ServerArgs
from radixrt.managers.launcher import ChildProcesses


class FakeProc:
    def __init__(self, pid: int, alive: bool = True, exitcode: int | None = None):
        self.pid, self._alive, self.exitcode = pid, alive, exitcode

    def is_alive(self) -> bool:
        return self._alive


@pytest.fixture
def children():
    made = []

    def make(**kw) -> ChildProcesses:
        c = ChildProcesses(ServerArgs(**kw))
        made.append(c)
        return c

    yield make
    for c in made:
        c.procs.clear()
        c.shutdown()


def test_one_worker_keeps_the_classic_names(children):
    c = children()
    assert c.worker_names == ["scheduler"]
    assert c.worker_addrs == [c.ipc.scheduler_in]
    assert c.worker_args() is c.args


def test_workers_split_the_threads(children):
    c = children(dp_size=3, num_threads=7)
    assert c.worker_names == ["scheduler-0", "scheduler-1", "scheduler-2"]
    assert len(set(c.worker_addrs)) == 3 and c.worker_addrs[0] == c.ipc.scheduler_in
    assert c.worker_args().num_threads == 2
    assert c.args.num_threads == 7  # the server's own args are untouched
    assert children(dp_size=4, num_threads=2).worker_args().num_threads == 1


def test_dead_workers_and_dead_child(children):
    c = children(dp_size=2)
    c.procs = {"scheduler-0": FakeProc(10), "scheduler-1": FakeProc(11, False, -9),
               "detokenizer": FakeProc(12)}
    assert c.dead_workers() == {1: "the scheduler-1 process (pid 11) exited unexpectedly "
                                   "(exit code -9)"}
    assert c.dead_child() is None  # one worker left: the server goes on
    assert c.worker_pids() == [10, 11]
    c.procs["scheduler-0"] = FakeProc(10, False, 1)
    assert "scheduler-0" in c.dead_child() and "scheduler-1" in c.dead_child()
    c.procs["scheduler-0"] = FakeProc(10)
    c.procs["detokenizer"] = FakeProc(12, False, 1)
    assert c.dead_child() == "the detokenizer process exited unexpectedly (exit code 1)"


def test_dp_with_tp_is_refused():
    with pytest.raises(ValueError, match="dp_size > 1 cannot be combined"):
        ServerArgs(dp_size=2, tp_size=2)
    with pytest.raises(ValueError, match="dp_size must be >= 1"):
        ServerArgs(dp_size=0)
