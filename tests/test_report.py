"""`rlhf report`: a self-contained page built from a run directory's files, checked in a real headless browser."""

from __future__ import annotations

import json
import re

import pytest

from browser import images_in_browser, render_in_browser
from rlhf.cli import main
from rlhf.eval.report import _num, build_report, verdict_sentence

GOLD_SFT = 0.1 + 0.2  # 0.30000000000000004: a float whose raw repr must never reach the page
GOLD_PPO = 0.41234567891
CI = [0.0512345678, 0.1723456789]
# What a person reads at the top of the fake run's report (3 significant digits, signs on the CI bounds).
SENTENCE = (
    "PPO improved on SFT: its gold score is higher by 0.112, and the 95% CI of the difference (+0.0512 to +0.172) "
    "lies entirely above 0."
)


def _fake_run(root, samples=None):
    """A run directory as `rlhf demo` leaves it, minus the models: the report reads only these files."""
    root.mkdir()
    stages = {
        "sft": [{"step": s, "loss": 3.0 / s, "eval/loss": 3.2 / s} for s in range(1, 6)],
        "reward": [{"step": s, "accuracy": 0.5 + s / 20, "eval/accuracy": 0.5 + s / 25} for s in range(1, 6)],
        "ppo": [
            {
                "step": s,
                "gold/score": 0.3 + s / 50,
                "objective/scores": s / 10,
                "objective/kl": s / 20,
                "completions/mean_length": 9 - s / 2,
            }
            for s in range(1, 6)
        ],
    }
    for stage, rows in stages.items():
        (root / stage).mkdir()
        (root / stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / stage / "summary.json").write_text(json.dumps({"seconds": 1.5, "n_prompts": 4000}))
        (root / stage / "config.json").write_text(json.dumps({"run_config": {"seed": 0, "out": str(root)}}))
    summary = {  # the keys `rlhf demo` writes (compare's figures + the reward model's + timings)
        "policy_stage": "ppo",
        "n_prompts": 64,
        "samples_per_prompt": 1,
        "temperature": 1.0,
        "gold_sft": GOLD_SFT,
        "gold_ppo": GOLD_PPO,
        "gold_diff": GOLD_PPO - GOLD_SFT,
        "gold_diff_ci95": CI,
        "gold_win_rate": 0.6171875,
        "kl_ppo": 1.23456789,
        "kl_train": {"initial": 0.0, "final": 1.1111111111, "max": 1.4142135623730951},
        "rm_accuracy": 0.7734375,
        "rm_gold_agreement": 0.81372549,
        "seconds": {"sft": 30.123456, "reward": 12.5, "ppo": 95.87654321, "total": 140.0},
        "samples": samples
        or [
            {
                "prompt": "Q: <b>x</b>\nA:",
                "sft": " x. Sure!",
                "ppo": " x.",
                "gold_sft": 0.25,
                "gold_ppo": 0.75,
            },
            {"prompt": "Q: y\nA:", "sft": " y.", "ppo": " y.", "gold_sft": 0.5, "gold_ppo": 0.5},
        ],
    }
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_report_embeds_every_figure_and_escapes_text(tmp_path) -> None:
    run = _fake_run(tmp_path / "run")
    page = build_report(run).read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert len(images) == 5  # sft loss, reward accuracy, ppo gold, KL, length
    assert len(list((run / "plots").glob("*.png"))) == 5
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page  # sample text is escaped, never markup
    assert 'src="http' not in page and "<link" not in page  # self-contained: nothing fetched
    # Every plot says what its axes measure, with units.
    assert "KL (nats per response) against update (one rollout batch each)" in page
    assert "cross-entropy (nats per token) against optimiser step" in page


def test_report_numbers_are_for_people(tmp_path) -> None:
    page = build_report(_fake_run(tmp_path / "run")).read_text()
    assert "0.30000000000000004" not in page and "1.4142135623730951" not in page
    assert not re.search(r"\d\.\d{6,}", page.split("<details>")[0].split("<img")[0])  # no raw floats up top
    assert "{&quot;" not in page and "{'" not in page  # dicts are tables, not JSON text
    assert "<td>max</td><td class='num'>1.41</td>" in page  # kl_train as a small table, 3 significant digits
    # Keys get names for people in the comparison's summary only: a stage's n_prompts are its training prompts.
    assert page.count("held-out prompts<code class='key'>n_prompts</code>") == 1
    assert [_num(x) for x in (0.5, 123.4, 0.000012345, 2.0, 1523.7, 7, 0.0)] == [
        "0.500",
        "123",
        "1.23e-05",
        "2.00",
        "1524",
        "7",
        "0",
    ]
    assert _num(0.0512345, sign=True) == "+0.0512" and _num(-0.2, sign=True) == "-0.200"


def test_verdict_follows_where_the_confidence_interval_lies() -> None:
    s = {"policy_stage": "grpo", "gold_sft": 0.2, "gold_ppo": 0.1, "gold_diff": -0.1}
    assert verdict_sentence(s | {"gold_diff_ci95": [-0.15, -0.05]}) == (
        "worse",
        "GRPO got worse than SFT: its gold score is lower by 0.100, and the 95% CI of the difference "
        "(-0.150 to -0.0500) lies entirely below 0.",
    )
    kind, sentence = verdict_sentence(s | {"gold_diff_ci95": [-0.15, 0.01]})
    assert kind == "inconclusive" and sentence.startswith(
        "Inconclusive: GRPO's gold score differs from SFT's by"
    )
    assert "contains 0, so this run cannot tell whether GRPO improved." in sentence
    assert (
        verdict_sentence(s | {"gold_diff_ci95": [0.0, 0.3]})[0] == "inconclusive"
    )  # a bound on 0 is not above
    s = {
        "policy_stage": "dpo",
        "gold_sft": 0.1,
        "gold_ppo": 0.3,
        "gold_diff": 0.2,
        "gold_diff_ci95": [0.1, 0.3],
    }
    assert verdict_sentence(s)[1].startswith("DPO improved on SFT: its gold score is higher by 0.200")
    assert verdict_sentence({"policy_stage": "dpo", "kl_ppo": 0.5})[0] == "none"  # prompts with no gold judge


def test_samples_mark_where_sft_and_the_policy_differ(tmp_path) -> None:
    page = build_report(_fake_run(tmp_path / "run")).read_text()
    rows = re.findall(r"<tr class='(same|differs)'>", page)
    assert rows == ["differs", "same"]
    assert "1 of 2 responses differ between SFT and PPO" in page
    assert " x.<mark> Sure!</mark>" in page  # the SFT response's text after the common start is marked


def test_report_cli_rejects_a_missing_run_dir(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path / "nope")])
    assert exit_.value.code == 2
    assert "run directory not found" in capsys.readouterr().err


def test_report_renders_in_a_headless_browser(tmp_path) -> None:
    run = _fake_run(tmp_path / "run")
    page = build_report(run).read_text()
    expected = int(re.search(r"data-figures='(\d+)'", page)[1])
    check = images_in_browser(page, tmp_path)
    assert check == {"n": expected, "broken": []}
    assert expected == 5


def test_report_first_screen_tells_the_result_in_a_headless_browser(tmp_path) -> None:
    page = build_report(_fake_run(tmp_path / "run")).read_text()
    seen = render_in_browser(page, tmp_path, ("#verdict", "#verdict-sentence"), window=(1280, 800))
    verdict = seen["elements"]["#verdict"]
    assert verdict is not None, "no verdict box on the page"
    # The whole verdict box is on the first screen of a laptop-sized window: nothing to scroll for.
    assert 0 <= verdict["top"] and verdict["bottom"] <= seen["viewport"][1], (verdict, seen["viewport"])
    assert seen["elements"]["#verdict-sentence"]["text"].strip() == SENTENCE
    text = " ".join(verdict["text"].split())  # rendered text; &nbsp; and line breaks as plain spaces
    assert (
        "Gold score, SFT \u2192 PPO 0.300 \u2192 0.412 (difference +0.112, 95% CI +0.0512 to +0.172)" in text
    )
    assert "KL to the SFT reference 1.23 nats per response" in text
    assert "Reward model's agreement with the gold judge 0.814 (it prefers the judge's choice in 81%" in text
    # Nowhere on the rendered page a raw float or a dict printed as text.
    assert not re.search(r"\d\.\d{6,}", seen["text"]), re.search(r".{40}\d\.\d{6,}.{20}", seen["text"])
    assert "{" not in seen["text"]
    assert "1 of 2 responses differ between SFT and PPO" in seen["text"]
