"""`rlhf report`: a self-contained page built from a run directory's files, checked in a real headless browser."""

from __future__ import annotations

import json
import re

import pytest

from browser import images_in_browser
from rlhf.cli import main
from rlhf.eval.report import build_report


def _fake_run(root):
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
        (root / stage / "summary.json").write_text(json.dumps({"seconds": 1.5}))
        (root / stage / "config.json").write_text(json.dumps({"run_config": {"seed": 0, "out": str(root)}}))
    summary = {
        "gold_sft": 0.33,
        "gold_ppo": 0.41,
        "gold_diff_ci95": [0.01, 0.15],
        "samples": [{"prompt": "Q: <b>x</b>\nA:", "sft": " x. Sure!", "ppo": " x."}],
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
