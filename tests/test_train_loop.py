"""The supervised loop shared by SFT, the reward model and DPO (`rlhf.stages.train_loop`): SFT and the reward
stage give the figures they gave before they moved onto it.

The values were recorded from the code before the move (issue 18), with 2 accumulation steps per optimizer step,
on one thread; the move changed no number (float32 on this machine class: they hold to ~1e-7).
"""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from rlhf import cli
from rlhf.metrics import read_metrics
from tiny_runs import TINY_REWARD, TINY_SFT

SFT_PINNED = {
    "loss": [5.244497291077959, 4.692775519975512, 4.175689619215553, 3.8933527853636614, 3.6675164737159895,
             3.5066325036281456, 3.518519725614381, 3.387429258765244],
    "grad_norm": [1.5166453123092651, 1.3109347820281982, 1.2536877393722534, 1.144104242324829,
                  1.1505775451660156, 0.8979679346084595, 0.9509626030921936, 0.918418824672699],
    "eval/loss": [None, None, None, 3.7800608747815723, None, None, None, 3.4066911297693574],
    "lr": [0.003, 0.0029139170753636453, 0.002582934576132267, 0.002067172942406179, 0.0014687850911461657,
           0.0009062890750396618, 0.0004910941286374807, 0.0003054347031064273],
}  # fmt: skip
SFT_NORM = 12.041292115089991
REWARD_PINNED = {
    "loss": [0.702054888010025, 0.6161454021930695, 0.64583820104599, 0.6463793516159058],
    "accuracy": [0.375, 0.75, 0.6875, 0.625],
    "margin": [-0.009326651692390442, 0.1782854199409485, 0.10993433743715286, 0.11985499411821365],
    "grad_norm": [3.0510098934173584, 1.8338817358016968, 1.0326528549194336, 0.7326915860176086],
    "eval/accuracy": [None, 0.5, None, 0.4749999940395355],
    "eval/margin": [None, -0.01382948737591505, None, 0.014081552624702454],
}  # fmt: skip
REWARD_NORM = 12.089387424816554


def _norm(out) -> float:
    return float(
        sum((t.double() ** 2).sum() for t in load_file(str(out / "model.safetensors")).values()) ** 0.5
    )


def _assert_pinned(out, pinned: dict, norm: float) -> None:
    rows = read_metrics(out / "metrics.jsonl")
    for name, values in pinned.items():
        got = [r.get(name) for r in rows]
        assert [v is None for v in got] == [v is None for v in values], name
        real = [(g, v) for g, v in zip(got, values) if v is not None]
        assert [g for g, _ in real] == pytest.approx([v for _, v in real], rel=1e-5, abs=1e-6), name
    # rel 1e-7: 1e-9 held on one machine class and failed by 1.2e-9 on another (float32 summation order).
    assert _norm(out) == pytest.approx(norm, rel=1e-7)


def test_sft_and_reward_give_their_pinned_figures_on_the_shared_loop(tmp_path):
    sft = tmp_path / "sft"
    cli.run(["sft", *TINY_SFT, "--optim.grad-accum", "2", "--batch-size", "16", "--log-every", "5",
             "--eval-every", "20", "--out", str(sft)])  # fmt: skip
    _assert_pinned(sft, SFT_PINNED, SFT_NORM)
    reward = tmp_path / "reward"
    cli.run(["reward", "--init", str(sft), *TINY_REWARD, "--optim.grad-accum", "2", "--batch-size", "8",
             "--log-every", "5", "--eval-every", "10", "--out", str(reward)])  # fmt: skip
    _assert_pinned(reward, REWARD_PINNED, REWARD_NORM)
