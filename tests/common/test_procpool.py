"""The build's process pool: results in order, errors and dead workers raised, no helper threads."""

import os
import signal
import threading

import pytest

from pipeline.common.procpool import ForkPool, RemoteTraceback, WorkerDied

_state = {}


def _init(tag):
    _state["tag"] = tag


def _where(k):
    return k, os.getpid(), _state.get("tag")


def _square_or_fail(k):
    if k == 5:
        raise ValueError(f"task {k} refuses")
    return k * k


def _die(k):
    if k == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return k


def test_every_task_runs_once_in_a_worker_and_imap_keeps_their_order():
    threads = threading.active_count()
    with ForkPool(2, _init, ("ready",)) as pool:
        got = list(pool.imap(_where, range(40)))
        assert threading.active_count() == threads   # the main thread alone sends and receives
        unordered = sorted(pool.imap_unordered(_where, range(40)))
    assert [k for k, _, _ in got] == list(range(40))
    pids = {pid for _, pid, _ in got}
    assert len(pids) == 2 and os.getpid() not in pids   # each worker is handed tasks from the start
    assert {tag for _, _, tag in got} == {"ready"}
    assert [k for k, _, _ in unordered] == list(range(40))


def test_one_worker_runs_in_this_process_after_its_initializer():
    pool = ForkPool(1, _init, ("here",))
    assert list(pool.imap(_where, range(3))) == [(k, os.getpid(), "here") for k in range(3)]
    pool.close()


def test_an_exception_in_a_task_is_raised_here_with_the_workers_traceback():
    with ForkPool(2) as pool:
        with pytest.raises(ValueError, match="task 5 refuses") as info:
            list(pool.imap(_square_or_fail, range(10)))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "_square_or_fail" in str(info.value.__cause__)


def test_a_killed_worker_is_an_error_naming_its_signal_not_a_hang():
    with ForkPool(2) as pool:
        with pytest.raises(WorkerDied, match="signal 9"):
            list(pool.imap_unordered(_die, range(10)))
