"""A pool of forked worker processes with no helper threads in the main process.

Why not :class:`multiprocessing.pool.Pool`: its worker-handler thread waits
on the result queue it does not read, so it wakes and loops for as long as a
result sits unread, which made it the largest CPU cost of a build's main
process, more than everything the build itself does there
(benchmarks/history/preprocess.md "The main process off the per-image path").
The main process's CPU is the one part of a build that does not grow with
the cores, so it caps the build on a large machine.

Here each worker has its own pipe; the main thread sends every task and
reads every result itself, keeping two tasks in flight per worker so no
worker waits for the next, and waits in one ``select`` on all the pipes and
the workers' sentinels. A worker that dies (killed, out of memory) is an
error naming its exit, not a hang; an exception in a task is raised in the
main process with the worker's traceback as its cause.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from collections import deque
from multiprocessing.connection import wait
from typing import Callable, Iterable, Iterator, Optional

IN_FLIGHT = 2   # tasks queued at each worker: the next one is there when it finishes the current


class WorkerDied(RuntimeError):
    """A worker process ended while it held a task (killed, or out of memory)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as its text (set as the re-raised exception's cause)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def _serve(conn, initializer: Optional[Callable], initargs: tuple) -> None:
    """A worker's loop: (index, fn, arg) in, (index, ok, result or (exception, traceback text)) out."""
    # Ctrl-C reaches the whole process group; the main process alone answers it (it stops the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        index, fn, arg = msg
        try:
            reply = (index, True, fn(arg))
        except BaseException as exc:   # travels to the main process, which decides
            reply = (index, False, (exc, traceback.format_exc()))
        try:
            conn.send(reply)
        except Exception as exc:   # an unpicklable result or exception: say what it was
            conn.send((index, False, (RuntimeError(f"a worker's reply could not be sent: {exc!r}"),
                                      traceback.format_exc())))


class ForkPool:
    """``workers`` forked processes running tasks; with one worker, the calls run in this process.

    Args:
        workers: processes to fork (1: none, everything runs in-process).
        initializer: called with ``initargs`` once in each worker (in-process too, for one worker).
        initargs: its arguments, passed by fork, never pickled.
    """

    def __init__(self, workers: int, initializer: Optional[Callable] = None, initargs: tuple = ()) -> None:
        self.procs, self.conns = [], []
        if workers <= 1:
            if initializer is not None:
                initializer(*initargs)
            return
        ctx = mp.get_context("fork")
        try:
            for _ in range(workers):
                parent, child = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=_serve, args=(child, initializer, initargs), daemon=True)
                proc.start()
                child.close()
                self.procs.append(proc)
                self.conns.append(parent)
        except BaseException:
            self.close()
            raise

    def imap_unordered(self, fn: Callable, tasks: Iterable) -> Iterator:
        """``fn(task)`` for every task, in the order they finish."""
        for _, result in self._run(fn, tasks):
            yield result

    def imap(self, fn: Callable, tasks: Iterable) -> Iterator:
        """``fn(task)`` for every task, in the tasks' order."""
        done, nxt = {}, 0
        for index, result in self._run(fn, tasks):
            done[index] = result
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1

    def _run(self, fn: Callable, tasks: Iterable) -> Iterator[tuple[int, object]]:
        if not self.procs:
            yield from enumerate(map(fn, tasks))
            return
        todo = enumerate(tasks)
        held = {w: deque() for w in range(len(self.procs))}   # task indices each worker holds

        def feed(w: int) -> None:
            while len(held[w]) < IN_FLIGHT:
                nxt = next(todo, None)
                if nxt is None:
                    return
                self.conns[w].send((nxt[0], fn, nxt[1]))
                held[w].append(nxt[0])

        for w in held:
            feed(w)
        by_conn = {c: w for w, c in enumerate(self.conns)}
        while any(held.values()):
            busy = [w for w in held if held[w]]
            ready = wait([self.conns[w] for w in busy] + [self.procs[w].sentinel for w in busy])
            for conn in (r for r in ready if r in by_conn):
                w = by_conn[conn]
                try:
                    index, ok, value = conn.recv()
                except (EOFError, OSError):   # the worker is gone: its pipe closed with the task unanswered
                    self._died(w)
                held[w].remove(index)
                if not ok:
                    exc, text = value
                    raise exc from RemoteTraceback(text)
                feed(w)
                yield index, value
            for w in busy:   # a sentinel ready: the process ended; what it sent before is read above
                if self.procs[w].sentinel in ready and held[w] and not self.conns[w].poll():
                    self._died(w)

    def _died(self, w: int) -> None:
        proc = self.procs[w]
        proc.join(timeout=1)
        code = proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise WorkerDied(f"worker process {proc.pid} ended ({how}) while it held a task; if it was killed "
                         f"for memory, run with fewer workers")

    def close(self) -> None:
        """Stop every worker now (their current tasks are dropped) and wait for them."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []

    def __enter__(self) -> "ForkPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
