"""Shared tiny pipeline runs (session-scoped, built once): an SFT policy and a reward model initialised from it.

Used by the PPO and compare tests; each is a normal run directory written by `rlhf.cli.run`, so what is tested
downstream is what the commands write. Everything runs on one CPU thread (--threads 1).
"""

from __future__ import annotations

import pytest
import torch

from rlhf import cli


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a busy CPU spinning threads crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_SFT = [
    "--arch.n-layer", "1", "--arch.n-embd", "32", "--arch.n-head", "2",
    "--task.n-train", "200", "--task.n-eval", "40", "--gold-samples", "8", "--max-new-tokens", "8",
    "--max-length", "64", "--optim.lr", "3e-3", "--optim.warmup-steps", "5", "--max-steps", "40",
    "--no-progress", "--threads", "1",
]  # fmt: skip
TINY_REWARD = [
    "--task.n-train", "200", "--task.n-eval", "40", "--max-length", "64", "--max-steps", "20",
    "--optim.lr", "1e-3", "--optim.warmup-steps", "2", "--no-progress", "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_sft(tmp_path_factory):
    """Directory of a tiny SFT checkpoint (1 layer, 32 wide, 40 steps on the built-in task)."""
    out = tmp_path_factory.mktemp("tiny") / "sft"
    cli.run(["sft", *TINY_SFT, "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_reward(tiny_sft, tmp_path_factory):
    """Directory of a tiny reward model trained from `tiny_sft` (20 steps on built-in pairs)."""
    out = tmp_path_factory.mktemp("tiny") / "reward"
    cli.run(["reward", "--init", str(tiny_sft), *TINY_REWARD, "--out", str(out)])
    return out
