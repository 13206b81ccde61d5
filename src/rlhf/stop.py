"""Stopping cleanly on SIGTERM and SIGINT.

Schedulers (Slurm, Kubernetes) stop a job with SIGTERM and a grace period; Ctrl-C sends SIGINT. Inside a
training loop (`graceful()`), the first signal only asks the loop to stop: it finishes the current step, writes a
resume checkpoint, and raises `Stopped`, which the CLI turns into a message saying how to continue and exit code
143 (SIGTERM) or 130 (SIGINT), the codes a shell gives a process killed by those signals. A second signal, or
the first outside a training loop, raises `Stopped` at once; checkpoint writes are atomic, so that still never
leaves half a checkpoint. Under torchrun every rank gets the signal, and `requested()` agrees across ranks, so
all of them stop after the same step.
"""

from __future__ import annotations

import contextlib
import signal
import sys

import torch

from rlhf.distributed import all_reduce_sum, is_main, world

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class Stopped(BaseException):
    """A run stopped by a signal. A BaseException, like KeyboardInterrupt, so `except Exception` never eats it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = EXIT_CODES.get(signum, 128 + signum)


_requested: int | None = None
_graceful = 0  # how many training loops are running (a demo runs its stages one after another)


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(signum: int, frame) -> None:
    global _requested
    if _requested is not None or not _graceful:
        raise Stopped(signum, f"stopped by {name(signum)}")
    _requested = signum
    if is_main():  # under torchrun every rank gets the signal; one line is enough
        print(
            f"rlhf: {name(signum)} received: finishing the current step, then writing a resume checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )


def install() -> None:
    """Route SIGTERM and SIGINT through this module (the CLI calls it once per command)."""
    global _requested
    _requested = None
    for s in EXIT_CODES:
        signal.signal(s, _handler)


@contextlib.contextmanager
def graceful():
    """Inside: a first signal waits for the loop's end of step (`requested()`), instead of stopping at once."""
    global _graceful
    _graceful += 1
    try:
        yield
    finally:
        _graceful -= 1


def requested() -> int | None:
    """The signal that asked this run to stop, on any process (a collective under torchrun: call it on every rank
    at the same point of every step), or None."""
    if world() > 1:
        # How many ranks got each signal; any rank's request stops every rank (SIGTERM wins if both came).
        counts = all_reduce_sum(
            torch.tensor([float(_requested == s) for s in EXIT_CODES], dtype=torch.float64)
        )
        return next((s for s, c in zip(EXIT_CODES, counts.tolist()) if c > 0), None)
    return _requested
