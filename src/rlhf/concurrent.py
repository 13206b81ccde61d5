"""Run independent pieces of model work at the same time, one Python thread each, splitting the CPU threads.

Why: the models here are small (128-wide matmuls), and PyTorch's intra-op parallelism gets little out of a
second core on ops that size - two independent forward+backward passes (policy and value model in the PPO
update) each on one core finish sooner than the two one after the
other on two cores. PyTorch releases the GIL inside its ops, and autograd runs a CPU backward on the calling
thread, so the pieces really run in parallel. The results are the same numbers: the pieces share no tensors
that are written.

Grad mode and inference mode are thread-local in PyTorch, so each worker re-enters the caller's modes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

_pool: ThreadPoolExecutor | None = None


def run_concurrently(*fns: Callable[[], Any]) -> list[Any]:
    """Call each of `fns` (no arguments) and return their results in order.

    With at least two CPU threads, the work runs concurrently: torch's threads are split evenly between the
    calls (at least one each) and restored afterwards. With one thread it is a plain loop.
    """
    n_threads = torch.get_num_threads()
    if len(fns) < 2 or n_threads < 2:
        return [f() for f in fns]
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rlhf-concurrent")
    per = max(1, n_threads // len(fns))
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def in_worker(f: Callable[[], Any]) -> Any:
        torch.set_num_threads(per)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return f()

    torch.set_num_threads(per)
    try:
        futures = [_pool.submit(in_worker, f) for f in fns[1:]]
        try:
            first = fns[0]()
        finally:  # never return (or raise) while a worker still runs: it would see the restored thread count
            rest = [fu.result() for fu in futures]
        return [first, *rest]
    finally:
        torch.set_num_threads(n_threads)
