"""rlhf.allocator: every command keeps freed memory in the process, so sampling and training steps stop
faulting in fresh pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Page faults per sampling call (batch 64, 16 new tokens, a small GPT) after one warm-up call, in a fresh process.
SAMPLING_FAULTS = """
import resource, torch
from rlhf.allocator import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)
from rlhf.generation import sample
from rlhf.models.gpt import GPT, GPTConfig
torch.manual_seed(0)
model = GPT(GPTConfig(n_layer=2, n_embd=64, n_head=2)).eval()
ids = torch.randint(0, 256, (64, 40))
mask = torch.ones_like(ids, dtype=torch.bool)
mask[::2, :7] = False
sample(model, ids, mask, 16, -1, 256)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    sample(model, ids, mask, 16, -1, 256)
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def sampling_faults(**env: str) -> tuple[bool, float]:
    """(whether keep_freed_memory applied, page faults per sampling call) in a fresh process."""
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "RLHF_MALLOC"))
    }
    out = subprocess.run(
        [sys.executable, "-c", SAMPLING_FAULTS],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", float(out[1])


linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="glibc's malloc only",
)


@linux_glibc
def test_sampling_reuses_freed_memory_instead_of_faulting_in_pages():
    applied, faults = sampling_faults()
    off, faults_off = sampling_faults(RLHF_MALLOC_TUNING="0")
    assert applied and not off
    if faults_off < 2000:  # glibc's own thresholds happened to keep the memory: nothing to tell apart
        pytest.skip(
            f"glibc's defaults kept the memory in this process too ({faults_off:.0f} faults per call)"
        )
    # ~3,400-4,000 faults per call with glibc's defaults, 0-250 with the tuning
    assert faults < 1000, f"{faults:.0f} page faults per call with the tuning ({faults_off:.0f} without)"


@linux_glibc
def test_a_users_own_malloc_settings_are_left_alone():
    assert not sampling_faults(MALLOC_TRIM_THRESHOLD_="131072")[0]
    assert not sampling_faults(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")[0]
