"""How the bench times its contenders on a shared machine: rates, interleaved rounds, alternated calls.

A shared VM's speed moves from one spell to the next, so every ratio the
bench reports is taken between contenders timed in the same round, and the
in-process contenders of about a millisecond a call are timed call by call
alternately (benchmarks/history/bench.md "`python cli.py bench`").
"""

from __future__ import annotations

import time
from typing import Callable


def rate(fn: Callable[[], int], min_seconds: float = 0.0) -> float:
    """Images/s of ``fn`` (which returns how many images it handled), called
    again until it has run ``min_seconds``: an epoch of a small split is too
    short to time alone on a shared VM (benchmarks/history/bench.md "`python cli.py bench`")."""
    t, n = time.perf_counter(), 0
    while True:
        n += fn()
        dt = time.perf_counter() - t
        if dt >= min_seconds:
            return n / dt


def alternated(contenders: dict[str, Callable[[], int]], min_seconds: float) -> dict[str, float]:
    """Each contender's rate, calls alternating one by one until each has run ``min_seconds``.

    For in-process contenders of about a millisecond a call (an epoch of
    the resident loader, a pass of the memory gather): a shared VM's speed
    moves between consecutive half-second spells, so a ratio of two rates
    is only trusted when they were measured within milliseconds of each
    other, interleaved call by call (benchmarks/history/bench.md "The 64 px resident gap
    found and closed").
    """
    seconds = dict.fromkeys(contenders, 0.0)
    images = dict.fromkeys(contenders, 0)
    while min(seconds.values()) < min_seconds:
        for name, fn in contenders.items():
            t = time.perf_counter()
            images[name] += fn()
            seconds[name] += time.perf_counter() - t
    return {name: images[name] / seconds[name] for name in contenders}


def interleaved(contenders: dict[str, Callable[[], int]], repeats: int, min_seconds: float,
                 together: tuple[str, ...] = ()) -> dict[str, list]:
    """Each contender's rate per round, measured round-robin.

    A round times every contender once, back to back, so a slow spell of
    this shared VM (the notebooks' loader alone moved by a factor of two
    from one minute to the next) hits all of them alike, and a ratio
    is taken within a round. The contenders named in ``together`` are
    timed call by call alternately within the round (:func:`alternated`).
    """
    rounds: dict[str, list] = {name: [] for name in contenders}
    for _ in range(max(1, repeats)):
        for name, fn in contenders.items():
            if name not in together:
                rounds[name].append(rate(fn, min_seconds))
        if together:
            for name, r in alternated({n: contenders[n] for n in together}, min_seconds).items():
                rounds[name].append(r)
    return rounds
