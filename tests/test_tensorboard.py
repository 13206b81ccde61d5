"""--tensorboard: the same metric names and values as metrics.jsonl in a TensorBoard event file, resume-aware."""

from __future__ import annotations

import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlhf import cli
from rlhf.errors import UserError
from rlhf.metrics import MetricsWriter, read_metrics


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_file_holds_the_jsonl_names_and_values(tmp_path):
    w = MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True)
    for step in (1, 2, 3):
        w.log(step, **{"objective/kl": 0.5 * step, "lr": 1e-3, "val/num_eos_tokens": step})
    w.close()
    tb = scalars(tmp_path / "tensorboard")
    assert set(tb) == {"objective/kl", "lr", "val/num_eos_tokens"}
    assert tb["objective/kl"] == [(1, 0.5), (2, 1.0), (3, 1.5)]
    assert [r["objective/kl"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0.5, 1.0, 1.5]

    # Resume at step 2: the events of step 3 from the first run are hidden, as its line is dropped from the jsonl.
    w = MetricsWriter(tmp_path / "metrics.jsonl", resume_step=2, tensorboard=True)
    w.log(3, **{"objective/kl": 9.0})
    w.close()
    assert scalars(tmp_path / "tensorboard")["objective/kl"] == [(1, 0.5), (2, 1.0), (3, 9.0)]


def test_sft_run_writes_tensorboard_under_out(tiny_sft, tmp_path):
    cli.run(["sft", "--init", str(tiny_sft), "--task.n-train", "32", "--task.n-eval", "8", "--max-length", "64",
             "--max-steps", "2", "--log-every", "1", "--gold-samples", "2", "--max-new-tokens", "2",
             "--tensorboard", "--no-progress", "--threads", "1", "--out", str(tmp_path)])  # fmt: skip
    rows = read_metrics(tmp_path / "metrics.jsonl")
    tb = scalars(tmp_path / "tensorboard")
    assert set(tb) == {k for r in rows for k in r if k != "step"}
    assert tb["loss"] == [(r["step"], pytest.approx(r["loss"])) for r in rows]


def test_missing_tensorboard_package_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    with pytest.raises(UserError, match=r"pip install -e '.\[tensorboard\]'"):
        MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True)
