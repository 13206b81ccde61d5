"""Stage 2 (reward model): metrics by hand, a tiny end-to-end run, reload/eval, user data files, truncation, resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

import rlhf.stages.reward as reward_stage
from rlhf import cli
from rlhf.data.tokenizer import ByteTokenizer
from rlhf.metrics import read_metrics
from rlhf.models.build import load_scalar
from rlhf.stages.reward import encode_pairs, load_pair_data, pair_metrics, score_pairs


# ------------------------------------------------------------------------------------------------ metrics
def test_pair_metrics_by_hand():
    m = pair_metrics(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert m["n_pairs"] == 2
    assert m["accuracy"] == 0.5  # d = [2, -1]: one pair ranked right
    assert m["margin"] == pytest.approx(0.5)  # (2 - 1) / 2
    assert m["reward_chosen"] == pytest.approx(1.0) and m["reward_rejected"] == pytest.approx(0.5)
    assert m["reward_mean"] == pytest.approx(0.75)
    assert m["reward_std"] == pytest.approx(torch.tensor([2.0, 0.0, 0.0, 1.0]).std().item())


def test_ece_by_hand_on_two_pairs():
    s = torch.sigmoid
    # Both orderings: probs sigma(2), sigma(-1) (outcome 1) and 1 - sigma(2), 1 - sigma(-1) (outcome 0).
    p2, pm1 = float(s(torch.tensor(2.0))), float(s(torch.tensor(-1.0)))
    # 10 bins: 0.881 -> bin 8, 0.269 -> bin 2, 0.119 -> bin 1, 0.731 -> bin 7: one prediction per bin.
    m = pair_metrics(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]), n_bins=10)
    expected = ((1 - p2) + (1 - pm1) + (1 - p2) + (1 - pm1)) / 4
    assert m["ece"] == pytest.approx(expected)
    assert [r["count"] for r in m["reliability"]] == [0, 1, 1, 0, 0, 0, 0, 1, 1, 0]
    # 2 bins: [0.269, 0.119] (observed 1/2) and [0.881, 0.731] (observed 1/2).
    m2 = pair_metrics(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]), n_bins=2)
    low = abs(0.5 - (pm1 + (1 - p2)) / 2)
    high = abs(0.5 - (p2 + (1 - pm1)) / 2)
    assert m2["ece"] == pytest.approx(0.5 * low + 0.5 * high)
    assert m2["ece"] == pytest.approx(abs(0.5 - (p2 + 1 - pm1) / 2))


# ------------------------------------------------------------------------------------------------ end to end
TINY = [
    "--task.n-train", "200", "--task.n-eval", "40", "--max-length", "64", "--optim.lr", "1e-3",
    "--optim.warmup-steps", "5", "--log-every", "5", "--eval-every", "10", "--save-every", "20",
    "--no-progress", "--threads", "1",
]  # fmt: skip
STEPS = 40


@pytest.fixture(scope="module")
def rm_run(tiny_sft, tmp_path_factory):
    """A tiny reward run from the SFT checkpoint; captures the model at optimizer creation and at save."""
    out = tmp_path_factory.mktemp("reward") / "run"
    captured = {}
    make_optimizer, save_checkpoint = reward_stage.make_optimizer, reward_stage.save_checkpoint

    def spy_optimizer(model, *a, **k):
        captured["initial"] = {n: t.detach().clone() for n, t in model.state_dict().items()}
        return make_optimizer(model, *a, **k)

    def spy_save(directory, model, config):
        captured["model"] = model
        return save_checkpoint(directory, model, config)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reward_stage, "make_optimizer", spy_optimizer)
        mp.setattr(reward_stage, "save_checkpoint", spy_save)
        summary = cli.run(
            ["reward", "--init", str(tiny_sft), *TINY, "--max-steps", str(STEPS), "--out", str(out)]
        )
    return out, summary, captured


def test_reward_run_trains_and_writes_outputs(rm_run, tiny_sft):
    out, summary, captured = rm_run
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    for key in (
        "accuracy",
        "margin",
        "ece",
        "n_pairs",
        "n_truncated",
        "n_train",
        "reward_norm",
        "reliability",
    ):
        assert key in saved, key
    assert saved["n_pairs"] == 40 and saved["n_train"] == 200 and saved["steps"] == STEPS
    assert 0.0 <= saved["accuracy"] <= 1.0 and 0.0 <= saved["ece"] <= 1.0
    assert saved["accuracy"] == summary["accuracy"] and saved["margin"] == summary["margin"]
    assert sum(r["count"] for r in saved["reliability"]) == 2 * saved["n_pairs"]

    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "scalar" and config["stage"] == "reward" and config["pooling"] == "last"
    assert config["max_length"] == 64 and config["step"] == STEPS and config["parent"] == str(tiny_sft)
    norm = config["reward_norm"]
    assert math.isfinite(norm["mean"]) and norm["std"] > 0 and norm["n"] > 0
    assert norm == saved["reward_norm"]

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1, 5))
    assert all({"loss", "accuracy", "margin", "lr", "grad_norm"} <= r.keys() for r in rows)
    assert [r["step"] for r in rows if "eval/accuracy" in r] == list(range(10, STEPS + 1, 10))
    assert rows[-1]["eval/accuracy"] == summary["accuracy"]

    # The trunk started as the SFT weights and the head fresh; training moved both.
    weights = load_file(str(out / "model.safetensors"))
    sft = load_file(str(tiny_sft / "model.safetensors"))
    initial = captured["initial"]
    for name, t in sft.items():
        assert torch.equal(initial[f"trunk.{name}"], t), name
    changed = [n for n in sft if not torch.equal(weights[f"trunk.{n}"], sft[n])]
    assert len(changed) > len(sft) // 2, changed
    assert not torch.equal(weights["head.weight"], initial["head.weight"])


def test_reward_eval_reloads_and_reproduces_scores(rm_run, tmp_path):
    out, summary, captured = rm_run
    loaded, tok, config = load_scalar(out)
    # The held-out pairs of the training run: the built-in task's test split (seed 0, 40 pairs).
    cfg = cli.parse(["reward", *TINY, "--out", str(tmp_path / "unused")])[1]
    _, rows, _ = load_pair_data(cfg, split_user_file=True)
    pairs = encode_pairs(tok, rows, config["max_length"])
    c_mem, r_mem = score_pairs(captured["model"], tok, pairs)
    c_disk, r_disk = score_pairs(loaded, tok, pairs)
    assert torch.equal(c_mem, c_disk) and torch.equal(r_mem, r_disk)
    by_hand = pair_metrics(c_disk, r_disk)
    assert by_hand["accuracy"] == summary["accuracy"]
    assert by_hand["margin"] == pytest.approx(summary["margin"], abs=1e-6)

    ev = cli.run(["reward", "eval", "--checkpoint", str(out), "--task.n-train", "1", "--task.n-eval", "40",
                  "--out", str(tmp_path / "eval"), "--no-progress", "--threads", "1"])  # fmt: skip
    assert ev["n_pairs"] == 40 and ev["checkpoint"] == str(out)
    assert ev["accuracy"] == summary["accuracy"]
    assert ev["margin"] == pytest.approx(summary["margin"], abs=1e-6)
    assert ev["ece"] == pytest.approx(summary["ece"], abs=1e-6)
    assert ev["n_truncated"] == sum(p.truncated for p in pairs)
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["accuracy"] == ev["accuracy"]


def test_reward_resume_from_step_20_matches_straight_run(rm_run, tiny_sft, tmp_path):
    out, straight, _ = rm_run
    resume_dir = out / "resume" / "step-0000020"
    assert resume_dir.is_dir(), sorted(p.name for p in (out / "resume").iterdir())
    fresh = tmp_path / "resumed"
    shutil.copytree(resume_dir, fresh / "resume" / "step-0000020")
    (fresh / "resume" / "latest").write_text("step-0000020\n")
    resumed = cli.run(["reward", "--init", str(tiny_sft), *TINY, "--max-steps", str(STEPS), "--out", str(fresh),
                       "--resume"])  # fmt: skip
    a, b = load_file(str(out / "model.safetensors")), load_file(str(fresh / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed["accuracy"] == straight["accuracy"] and resumed["margin"] == straight["margin"]
    assert resumed["reward_norm"] == straight["reward_norm"]
    keep = ("step", "loss", "accuracy", "margin", "lr", "grad_norm", "eval/accuracy", "eval/margin")
    after = [{k: r.get(k) for k in keep} for r in read_metrics(out / "metrics.jsonl") if r["step"] > 20]
    again = [{k: r.get(k) for k in keep} for r in read_metrics(fresh / "metrics.jsonl")]
    assert again == after


def test_mean_pooling_trains_and_reloads(tiny_sft, tmp_path):
    out = tmp_path / "mean"
    summary = cli.run(["reward", "--init", str(tiny_sft), *TINY, "--max-steps", "5", "--pooling", "mean",
                       "--out", str(out)])  # fmt: skip
    assert summary["steps"] == 5 and math.isfinite(summary["margin"])
    model, tok, config = load_scalar(out)
    assert config["pooling"] == "mean" and model.pooling == "mean"
    # The score is the mean of the per-token values over real tokens, padding excluded.
    ids = torch.tensor([[257, 72, 105, 258, 256, 256], [257, 65, 66, 67, 68, 258]])
    mask = ids != tok.pad_id
    with torch.no_grad():
        values, scores = model(ids, mask), model.score(ids, mask)
    torch.testing.assert_close(scores[0], values[0, :4].mean())
    torch.testing.assert_close(scores[1], values[1].mean())


# ------------------------------------------------------------------------------------------------ user data
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _explicit_pairs(n: int, long_prompt: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 7 + 2, i % 5 + 1
        prompt = (
            f"Q: What is {a}+{b}?"
            + (" Please think it through carefully." * 3 if long_prompt else "")
            + "\nA:"
        )
        rows.append({"prompt": prompt, "chosen": f" {a + b}.", "rejected": f" {a * b + 1}, I think.",
                     "margin": float(i % 3)})  # fmt: skip
    return rows


def test_user_pairs_file_with_margin_trains(tiny_sft, tmp_path):
    data = _write_jsonl(tmp_path / "pairs.jsonl", _explicit_pairs(40))
    base = ["reward", "--init", str(tiny_sft), "--data", str(data), "--max-steps", "4", "--batch-size", "8",
            "--max-length", "64", "--eval-fraction", "0.25", "--no-progress", "--threads", "1"]  # fmt: skip
    summary = cli.run([*base, "--out", str(tmp_path / "m")])
    assert summary["n_train"] == 30 and summary["n_pairs"] == 10 and summary["n_truncated"] == 0
    assert "gold_agreement" not in summary  # user data has no gold judge
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["reward_norm"]["n"] == 2 * 30  # both responses of every training pair
    # The margin column is used: ignoring it trains different weights.
    cli.run([*base, "--no-use-margin", "--out", str(tmp_path / "nm")])
    a = load_file(str(tmp_path / "m" / "model.safetensors"))
    b = load_file(str(tmp_path / "nm" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # `reward eval` on a user file scores every row of it.
    ev = cli.run(["reward", "eval", "--checkpoint", str(tmp_path / "m"), "--data", str(data),
                  "--out", str(tmp_path / "ev"), "--no-progress", "--threads", "1"])  # fmt: skip
    assert ev["n_pairs"] == 40


def _hh_pairs(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        dialogue = f"\n\nHuman: Can you name a colour? Number {i}.\n\nAssistant:"
        if i % 4 == 0:  # a multi-turn transcript: the prompt is everything up to the last assistant turn
            dialogue = f"\n\nHuman: Hi.\n\nAssistant: Hello!\n\nHuman: A colour, please ({i})?\n\nAssistant:"
        rows.append({"chosen": dialogue + " Blue is a colour.", "rejected": dialogue + " No."})
    return rows


def test_hh_style_implicit_pairs_train(tiny_sft, tmp_path):
    data = _write_jsonl(tmp_path / "hh.jsonl", _hh_pairs(24))
    tok = ByteTokenizer()
    cfg = cli.parse(["reward", "--data", str(data), "--eval-fraction", "0.25"])[1]
    train_rows, held_rows, task = load_pair_data(cfg, split_user_file=True)
    assert task is None and len(train_rows) == 18 and len(held_rows) == 6
    for r in train_rows + held_rows:
        assert (
            r["prompt"].endswith("\n\nAssistant:")
            and r["chosen"] == " Blue is a colour."
            and r["rejected"] == " No."
        )
    assert encode_pairs(tok, train_rows, 128)[0].chosen.ids[-1] == tok.eos_id
    summary = cli.run(["reward", "--init", str(tiny_sft), "--data", str(data), "--eval-fraction", "0.25",
                       "--max-steps", "3", "--batch-size", "6", "--max-length", "128", "--out", str(tmp_path / "hh"),
                       "--no-progress", "--threads", "1"])  # fmt: skip
    assert summary["n_train"] == 18 and summary["n_pairs"] == 6 and math.isfinite(summary["margin"])
    assert (tmp_path / "hh" / "model.safetensors").is_file()


def test_truncation_is_counted_not_dropped(tiny_sft, tmp_path):
    rows = _explicit_pairs(20, long_prompt=True)
    data = _write_jsonl(tmp_path / "long.jsonl", rows)
    max_length = 24
    tok = ByteTokenizer()
    too_long = sum(
        len(tok.encode(r["prompt"])) + max(len(tok.encode(r["chosen"])), len(tok.encode(r["rejected"]))) + 2
        > max_length
        for r in rows
    )
    assert too_long == len(rows)  # every pair needs cutting at 24 tokens
    summary = cli.run(["reward", "--init", str(tiny_sft), "--data", str(data), "--max-length", str(max_length),
                       "--max-steps", "2", "--batch-size", "4", "--out", str(tmp_path / "t"),
                       "--no-progress", "--threads", "1"])  # fmt: skip
    assert summary["n_train"] + summary["n_pairs"] == len(rows)  # nothing dropped
    assert summary["n_truncated"] == len(rows)
    assert summary["n_truncated"] > 0
