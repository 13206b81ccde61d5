"""`rlhf compare`: the summary it writes, SFT against itself (zero KL, zero gold difference), the bootstrap CI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf import cli
from rlhf.eval.compare import bootstrap_ci


def test_bootstrap_ci_of_constant_diffs_is_the_constant():
    assert bootstrap_ci(torch.full((20,), 0.25), n_boot=200, seed=0) == [pytest.approx(0.25)] * 2
    lo, hi = bootstrap_ci(torch.zeros(7), n_boot=50, seed=3)
    assert lo == hi == 0.0


def test_bootstrap_ci_brackets_the_mean_and_repeats_with_the_seed():
    diffs = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, -0.5, 0.25, 1.5])
    lo, hi = bootstrap_ci(diffs, n_boot=500, seed=0)
    assert lo < float(diffs.mean()) < hi
    assert diffs.min() <= lo and hi <= diffs.max()
    assert bootstrap_ci(diffs, n_boot=500, seed=0) == [lo, hi]


COMPARE = [
    "--n-prompts", "16", "--samples-per-prompt", "2", "--response-length", "8", "--bootstrap", "200",
    "--no-progress", "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_ppo(tiny_sft, tiny_reward, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "ppo"
    cli.run(["ppo", "--sft", str(tiny_sft), "--reward", str(tiny_reward), "--episodes", "32",
             "--rollout-batch", "8", "--mini-batches", "2", "--ppo-epochs", "2", "--response-length", "8",
             "--task.n-train", "64", "--optim.lr", "1e-3", "--no-progress", "--threads", "1",
             "--out", str(out)])  # fmt: skip
    return out


def test_compare_sft_and_ppo_writes_summary(tiny_sft, tiny_reward, tiny_ppo, tmp_path):
    out = tmp_path / "cmp"
    summary = cli.run(["compare", "--sft", str(tiny_sft), "--policy", str(tiny_ppo), "--reward", str(tiny_reward),
                       *COMPARE, "--out", str(out)])  # fmt: skip
    saved = json.loads((out / "summary.json").read_text())
    for key in ("gold_sft", "gold_ppo", "gold_diff", "gold_diff_ci95", "gold_win_rate", "proxy_sft", "proxy_ppo",
                "kl_ppo", "length_sft", "length_ppo", "eos_rate_sft", "eos_rate_ppo", "samples"):  # fmt: skip
        assert key in saved, key
    for key in ("gold_sft", "gold_ppo", "proxy_sft", "proxy_ppo", "kl_ppo"):
        assert math.isfinite(saved[key]), key
    lo, hi = saved["gold_diff_ci95"]
    assert lo <= hi
    assert saved["gold_diff"] == pytest.approx(saved["gold_ppo"] - saved["gold_sft"], abs=1e-6)
    assert -1.0 <= saved["gold_sft"] <= 1.0 and -1.0 <= saved["gold_ppo"] <= 1.0
    assert 0.0 <= saved["gold_win_rate"] <= 1.0
    assert saved["n_prompts"] == 16 and saved["samples_per_prompt"] == 2
    assert 1 <= saved["length_ppo"] <= 8 and 1 <= saved["length_sft"] <= 8
    assert (
        0 < len(saved["samples"]) <= 12
        and {"prompt", "sft", "ppo", "gold_sft", "gold_ppo"} <= saved["samples"][0].keys()
    )
    # The PPO run's own summary is carried over (KL during training).
    ppo_summary = json.loads((tiny_ppo / "summary.json").read_text())
    assert saved["kl_train"]["final"] == ppo_summary["kl_final"]
    assert saved["gold_ppo"] == summary["gold_ppo"] and saved["kl_ppo"] == summary["kl_ppo"]


def test_compare_sft_against_itself_is_zero(tiny_sft, tiny_reward, tmp_path):
    summary = cli.run(["compare", "--sft", str(tiny_sft), "--policy", str(tiny_sft), "--reward", str(tiny_reward),
                       *COMPARE, "--out", str(tmp_path / "self")])  # fmt: skip
    assert abs(summary["kl_ppo"]) < 1e-5
    # The same weights and the same sampling seed: identical samples on both sides.
    assert summary["gold_diff"] == 0.0 and summary["gold_sft"] == summary["gold_ppo"]
    lo, hi = summary["gold_diff_ci95"]
    assert lo <= 0.0 <= hi
    assert summary["proxy_sft"] == summary["proxy_ppo"] and summary["length_sft"] == summary["length_ppo"]
    assert summary["gold_win_rate"] == 0.5
    assert all(s["sft"] == s["ppo"] for s in summary["samples"])
