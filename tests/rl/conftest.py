"""A fake process group for the `all_reduce` arguments of rl/: P threads, one per "process", whose all_reduce
sums the tensors all of them pass at the same call, like torch.distributed.all_reduce(op=SUM)."""

import threading
from collections.abc import Callable

import pytest
import torch


def _run_processes(fn: Callable, parts: list) -> list:
    """fn(part, all_reduce) on every part at once, each in its own thread; the results in part order.

    all_reduce is a true collective: it waits until every thread has called it, then returns to each the sum
    (taken in rank order, so every thread gets bit-identical totals) of what all of them passed.
    """
    n = len(parts)
    barrier = threading.Barrier(n, timeout=30)
    slots: list[torch.Tensor | None] = [None] * n
    results: list = [None] * n
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0].clone()
            for other in slots[1:]:
                total += other
            # Everyone has read the slots before anyone overwrites them at the next call.
            barrier.wait()
            return total

        try:
            results[rank] = fn(parts[rank], all_reduce)
        except BaseException as e:  # surfaced below; abort so the other threads do not wait forever
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def run_processes() -> Callable:
    """`run_processes(fn, parts)`: fn(part, all_reduce) in len(parts) simulated processes; list of results."""
    return _run_processes
