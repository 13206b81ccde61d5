"""Shared tiny pipeline runs (session-scoped, built once): an SFT policy and a reward model initialised from it.

Used by the PPO and compare tests; each is a normal run directory written by `rlhf.cli.run`, so what is tested
downstream is what the commands write. Everything runs on one CPU thread (--threads 1).
"""

from __future__ import annotations

import pytest
import torch

from rlhf import cli
from tiny_runs import TINY_REWARD, TINY_SFT


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a busy CPU spinning threads crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


# The last line of every test run counts the skips (0 too), so a CI log cannot pass while quietly skipping a test;
# `-rs` in pyproject.toml's addopts lists each skip's reason above it. It is written at unconfigure, after
# pytest's own "N passed" line, so it is the log's last line; only when a session ran (not for --help).
_SESSION_RAN = pytest.StashKey[bool]()


def pytest_sessionfinish(session):
    session.config.stash[_SESSION_RAN] = True


def pytest_unconfigure(config):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and config.stash.get(_SESSION_RAN, False):
        reporter.write_line(f"skipped: {len(reporter.stats.get('skipped', []))}")
