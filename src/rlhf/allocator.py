"""Keep freed CPU memory inside the process instead of handing it back to the OS after every step.

Why: glibc's malloc maps every allocation above its mmap threshold (128 KiB at start, raised as chunks are
freed) freshly from the OS, and gives free memory at the top of its heap back beyond a trim threshold. A
training or sampling step allocates and frees the same few MiB of activations again and again, so with the
defaults many steps map, fault in and zero the same pages anew; in a virtual machine each page fault costs
microseconds. Sampling 32 tokens for a batch of 64 with the workload GPT (benchmarks/compare_trl.py, one or
two threads) took 4,000-11,800 page faults and 12-38 ms of system time per 270-460 ms call with glibc's defaults,
at batch 16 0-2,600 faults; with the mmap threshold at 32 MiB (the largest glibc accepts) and the trim threshold
at 1 GiB, 0-60 faults and ~0 ms. The wall-time gain is a few percent, below this host's noise
(benchmarks/README.md). This is the light form of the PyTorch CPU tuning guide's advice to run with jemalloc or
tcmalloc. Tensors above 32 MiB (the weights of large models) are still mapped and unmapped on their own, and
the process keeps at most what it used at its peak.

Every `rlhf` command calls `keep_freed_memory()` once at start (stages through `setup_run`). Library code that
only imports rlhf is left alone. RLHF_MALLOC_TUNING=0 turns it off; a process whose allocator was already
configured (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES set) keeps that configuration.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""Allocations up to this size (glibc's largest allowed threshold) come from the process's heap."""
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
"""Free memory at the top of the heap is given back to the OS only beyond this much: a sampling call at batch 64
frees more than 32 MiB at once, and a 32 MiB trim threshold still made it fault in ~11,000 pages per call."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); True when they are set.

    False, and nothing changed, off Linux, with another C library than glibc, with RLHF_MALLOC_TUNING=0, or
    when the user configured glibc's allocator through the environment."""
    global _applied
    if _applied is None:
        _applied = False
        wanted = os.environ.get("RLHF_MALLOC_TUNING", "1") != "0" and not any(
            os.environ.get(k) for k in _USER_SETTINGS
        )
        if wanted and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)  # the C library this process already runs on
            except OSError:
                libc = None
            if libc is not None and hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
                _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                )
    return _applied
