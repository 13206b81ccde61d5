"""Stage 1 (SFT): the loss by hand, exact gradient accumulation, a tiny end-to-end run, sampling and exact resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rlhf import cli
from rlhf.data.collate import Encoded, sft_batch
from rlhf.metrics import read_metrics
from rlhf.models.gpt import GPT, GPTConfig
from rlhf.stages.sft import sft_loss

PAD, BOS, EOS, V = 256, 257, 258, 259


# ------------------------------------------------------------------------------------------------ loss
def test_sft_loss_by_hand_counts_response_targets_only():
    # bos "h" "i" | " " "y" eos : the prompt is bos + "hi" (prompt_len 3), the response " y" + eos.
    ids = [BOS, 104, 105, 32, 121, EOS]
    batch = sft_batch([Encoded(ids, prompt_len=3, truncated=False)], PAD)
    # Position t predicts ids[t + 1]; the targets at positions 2, 3, 4 are " ", "y", eos (the response).
    assert batch["loss_mask"][0].tolist() == [False, False, True, True, True, False]
    logits = torch.randn(1, len(ids), V, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits[0], dim=-1)
    expected = -(logp[2, 32] + logp[3, 121] + logp[4, EOS])
    nll, n = sft_loss(logits, batch["input_ids"], batch["loss_mask"])
    assert n == 3
    torch.testing.assert_close(nll, expected)
    # Changing the logits at prompt positions (or the last one, which has no target) changes nothing.
    edited = logits.clone()
    edited[0, [0, 1, 5]] += torch.randn(3, V) * 10
    torch.testing.assert_close(sft_loss(edited, batch["input_ids"], batch["loss_mask"])[0], expected)


def test_sft_loss_ignores_right_padding():
    a = Encoded([BOS, 65, 66, EOS], prompt_len=2, truncated=False)  # targets 66, eos at positions 1, 2
    b = Encoded([BOS, 67, 68, 69, 70, EOS], prompt_len=3, truncated=False)  # targets 69, 70, eos at 2, 3, 4
    batch = sft_batch([a, b], PAD)
    assert batch["input_ids"][0].tolist() == [BOS, 65, 66, EOS, PAD, PAD]
    logits = torch.randn(2, 6, V, generator=torch.Generator().manual_seed(1))
    logp = torch.log_softmax(logits, dim=-1)
    expected = -(logp[0, 1, 66] + logp[0, 2, EOS] + logp[1, 2, 69] + logp[1, 3, 70] + logp[1, 4, EOS])
    nll, n = sft_loss(logits, batch["input_ids"], batch["loss_mask"])
    assert n == 5
    torch.testing.assert_close(nll, expected)


def test_gradient_accumulation_equals_big_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64))
    gen = torch.Generator().manual_seed(0)
    examples = []
    for length, prompt_len in [
        (9, 3),
        (14, 5),
        (6, 2),
        (20, 8),
        (11, 4),
        (7, 6),
    ]:  # different lengths and pads
        body = torch.randint(0, 256, (length - 2,), generator=gen).tolist()
        examples.append(Encoded([BOS, *body, EOS], prompt_len, False))

    def grads(micro_batches):
        model.zero_grad(set_to_none=True)
        batches = [sft_batch(mb, PAD) for mb in micro_batches]
        total = sum(int(b["loss_mask"][:, :-1].sum()) for b in batches)  # the step's token count
        for b in batches:
            nll, _ = sft_loss(model(b["input_ids"]), b["input_ids"], b["loss_mask"])
            (nll / total).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    big = grads([examples])
    accumulated = grads([examples[:3], examples[3:]])
    for name, g in big.items():
        torch.testing.assert_close(accumulated[name], g, atol=1e-6, rtol=1e-5, msg=name)
    # Per-micro-batch means (the classic bug) would weight tokens unequally and differ.
    model.zero_grad(set_to_none=True)
    for mb in (examples[:3], examples[3:]):
        b = sft_batch(mb, PAD)
        nll, n = sft_loss(model(b["input_ids"]), b["input_ids"], b["loss_mask"])
        (nll / n / 2).backward()
    wrong = {n: p.grad for n, p in model.named_parameters()}
    assert not all(torch.allclose(wrong[n], g, atol=1e-6) for n, g in big.items())


# ------------------------------------------------------------------------------------------------ end to end
TINY = [
    "--arch.n-layer", "1", "--arch.n-embd", "32", "--arch.n-head", "2",
    "--task.n-train", "200", "--task.n-eval", "40", "--gold-samples", "32", "--max-new-tokens", "24",
    "--max-length", "64", "--optim.lr", "3e-3", "--optim.warmup-steps", "5",
    "--log-every", "5", "--eval-every", "10", "--save-every", "20", "--no-progress", "--threads", "1",
]  # fmt: skip
STEPS = 60  # ~1 s; over seeds 0-7 gold rises by >= 0.14 (at 30 steps by as little as 0.02)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    summary = cli.run(["sft", *TINY, "--max-steps", str(STEPS), "--out", str(out)])
    return out, summary


def test_sft_run_learns_and_writes_outputs(sft_run):
    out, summary = sft_run
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    assert summary["steps"] == STEPS and summary["n_train"] == 200 and summary["n_eval"] == 40
    assert summary["eval_loss"] < summary["eval_loss_before"] - 0.5
    # The untrained model almost never stops; after SFT it emits EOS and answers, so the gold score rises.
    assert summary["gold_before"] < -0.9
    assert summary["gold_after"] > summary["gold_before"] + 0.05
    assert summary["eos_rate"] > 0
    assert json.loads((out / "summary.json").read_text())["eval_loss"] == summary["eval_loss"]
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "policy" and config["stage"] == "sft" and config["step"] == STEPS
    assert config["backbone"]["arch"]["n_embd"] == 32 and config["run_config"]["max_steps"] == STEPS
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1, 5))
    assert all({"loss", "lr", "grad_norm"} <= r.keys() for r in rows)
    assert [r["step"] for r in rows if "eval/loss" in r] == list(range(10, STEPS + 1, 10))
    assert rows[-1]["eval/loss"] == pytest.approx(summary["eval_loss"])
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_sample_from_sft_checkpoint(sft_run, tmp_path):
    out, _ = sft_run
    prompt = "Q: What is 2+3?\nA:"
    res = cli.run(["sample", "--checkpoint", str(out), "--prompt", prompt, "--out", str(tmp_path / "s"),
                   "--max-new-tokens", "16", "--n", "2"])  # fmt: skip
    assert [r["prompt"] for r in res["samples"]] == [prompt, prompt]
    assert all(isinstance(r["response"], str) and isinstance(r["finished"], bool) for r in res["samples"])
    saved = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert saved["samples"] == res["samples"] and saved["checkpoint"] == str(out)


def test_resume_from_step_20_matches_straight_run_exactly(sft_run, tmp_path):
    out, straight = sft_run
    resume_dir = out / "resume" / "step-0000020"  # saved every 20 steps, the newest two kept: 20, 40
    assert resume_dir.is_dir(), sorted(p.name for p in (out / "resume").iterdir())
    fresh = tmp_path / "resumed"
    shutil.copytree(resume_dir, fresh / "resume" / "step-0000020")
    (fresh / "resume" / "latest").write_text("step-0000020\n")
    resumed = cli.run(["sft", *TINY, "--max-steps", str(STEPS), "--out", str(fresh), "--resume"])
    assert resumed["steps"] == STEPS
    a, b = load_file(str(out / "model.safetensors")), load_file(str(fresh / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed["eval_loss"] == straight["eval_loss"]
    # The resumed run's log picks up after step 20 with the straight run's values.
    keep = ("loss", "lr", "grad_norm", "eval/loss")
    after = [
        {k: r.get(k) for k in ("step", *keep)} for r in read_metrics(out / "metrics.jsonl") if r["step"] > 20
    ]
    again = [{k: r.get(k) for k in ("step", *keep)} for r in read_metrics(fresh / "metrics.jsonl")]
    assert again == after


def test_gold_samples_zero_skips_the_gold_measurement(tmp_path):
    summary = cli.run(
        ["sft", *TINY, "--gold-samples", "0", "--max-steps", "2", "--out", str(tmp_path / "run")]
    )
    assert summary["steps"] == 2
    assert summary["gold_before"] is None and summary["gold_after"] is None and summary["samples"] == []
