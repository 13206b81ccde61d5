"""`rlhf dpo`: packed pairs = two rows, the precomputed reference = the live one, every loss type end to end with
TRL's metric names, exact resume, 2 processes = 1, and HH-RLHF pairs on a tiny local Hugging Face causal LM."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf import cli
from rlhf.data.collate import encode_prompt_response
from rlhf.data.pairs import EncodedPair
from rlhf.data.tokenizer import ByteTokenizer
from rlhf.metrics import read_metrics
from rlhf.models.gpt import GPT, GPTConfig
from rlhf.stages.dpo import METRICS, pair_logps

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz"
DPO = [
    "--task.n-train", "48", "--task.n-eval", "16", "--batch-size", "8", "--max-steps", "4", "--log-every", "1",
    "--eval-every", "2", "--gold-samples", "4", "--max-new-tokens", "6", "--optim.lr", "1e-3",
    "--optim.warmup-steps", "1", "--no-progress", "--threads", "1",
]  # fmt: skip
TIMING = ("tokens_per_s",)


def _pairs(tok) -> list[EncodedPair]:
    texts = [("Q: What is 2+3?\nA:", " 5", " I think it might be 6, not sure."),
             ("Q: Capital of France?\nA:", " Paris.", " Paris. Paris."),  # responses that share a start
             ("x", " same", " same")]  # fmt: skip
    return [EncodedPair(encode_prompt_response(tok, p, c, 64), encode_prompt_response(tok, p, r, 64), None)
            for p, c, r in texts]  # fmt: skip


def test_packed_pairs_give_the_log_probs_and_gradients_of_two_rows():
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=64))
    pairs = _pairs(tok)
    got = []
    for packed in (True, False):
        model.zero_grad(set_to_none=True)
        c, r, nc, nr = pair_logps(model, pairs, tok.pad_id, packed)
        (c.sum() - 2 * r.sum()).backward()
        got.append(
            ((c.detach(), r.detach(), nc, nr), {n: p.grad.clone() for n, p in model.named_parameters()})
        )
    (a, ga), (b, gb) = got
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    # Token counts: the response and its EOS; the identical pair has equal log-probs.
    assert a[2].tolist() == [len(" 5") + 1, len(" Paris.") + 1, len(" same") + 1]
    assert float(a[0][2]) == pytest.approx(float(a[1][2]), abs=1e-6)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4, msg=n)


def _run(tiny_sft, out, *extra) -> dict:
    return cli.run(["dpo", "--sft", str(tiny_sft), *DPO, *extra, "--out", str(out)])


def _same(a: Path, b: Path, tol: float = 0.0, ignore: tuple[str, ...] = ()) -> None:
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for k in x:
            if k not in TIMING and not k.endswith(ignore):
                assert x[k] == pytest.approx(y[k], abs=tol, rel=tol), (k, x["step"])
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k in wa:
        assert float((wa[k] - wb[k]).abs().max()) <= tol, k


@pytest.fixture(scope="module")
def dpo_run(tiny_sft, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo") / "sigmoid"
    summary = _run(tiny_sft, out, "--save-every", "2")
    return out, summary


def test_dpo_trains_logs_trl_names_and_writes_a_policy(dpo_run, tiny_sft):
    out, summary = dpo_run
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for name in METRICS:
        assert all(math.isfinite(r[name]) for r in rows), name
        assert math.isfinite(rows[1][f"eval/{name}"]), name
    assert "gold/score" in rows[1] and summary["gold_before"] is not None
    # The policy starts as the reference: every implicit reward of the first step is 0, the loss log 2.
    assert rows[0]["rewards/chosen"] == pytest.approx(0, abs=1e-5) and rows[0]["loss"] == pytest.approx(
        math.log(2), abs=1e-5
    )
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "policy" and config["stage"] == "dpo" and config["parent"] == str(tiny_sft)
    sft, dpo = load_file(str(tiny_sft / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sum(not torch.equal(sft[k], dpo[k]) for k in sft) > len(sft) // 2


def test_precomputed_reference_equals_the_live_one(dpo_run, tiny_sft, tmp_path):
    out, _ = dpo_run
    live = tmp_path / "live"
    _run(tiny_sft, live, "--save-every", "2", "--no-precompute-ref")
    # The table is computed in batches of 2x the training batch: float noise of ~1e-7 in the reference, which Adam
    # scales up on parameters whose exact gradient is 0 (attention key biases): 3e-6 after 4 steps. The reward
    # accuracy is a step function of chosen - rejected, which is ~0 at the first step (policy = reference): that
    # noise decides it (0.25 vs 0 seen on one machine), so it is left out; the rewards themselves are compared.
    _same(out, live, tol=1e-5, ignore=("rewards/accuracies",))


def test_dpo_resume_is_bit_identical(dpo_run, tiny_sft, tmp_path):
    out, _ = dpo_run
    fresh = tmp_path / "resumed"
    shutil.copytree(out / "resume" / "step-0000002", fresh / "resume" / "step-0000002")
    (fresh / "resume" / "latest").write_text("step-0000002\n")
    _run(tiny_sft, fresh, "--save-every", "2", "--resume")
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] > 2]
    assert [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(fresh / "metrics.jsonl")
    ] == [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    a, b = load_file(str(out / "model.safetensors")), load_file(str(fresh / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "extra",
    [["--loss-type", "ipo"], ["--loss-type", "hinge"], ["--loss-type", "robust", "--label-smoothing", "0.1"],
     ["--loss-type", "simpo", "--beta", "2.0"], ["--label-smoothing", "0.1", "--rpo-alpha", "0.5"]],
    ids=["ipo", "hinge", "robust", "simpo", "cdpo-rpo"],
)  # fmt: skip
def test_every_loss_type_trains(tiny_sft, tmp_path, extra):
    out = tmp_path / "run"
    summary = _run(tiny_sft, out, "--max-steps", "2", "--eval-every", "2", *extra)
    rows = read_metrics(out / "metrics.jsonl")
    loss_type = extra[extra.index("--loss-type") + 1] if "--loss-type" in extra else "sigmoid"
    assert all(math.isfinite(r["loss"]) for r in rows) and summary["loss_type"] == loss_type
    assert rows[1]["rewards/margins"] != 0.0  # the policy moved


def test_bad_options_and_data_get_one_line(tiny_sft, tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    for args, expected in [
        (["--label-smoothing", "0.5"], "--label-smoothing"),
        (["--data", str(bad)], f"{bad}:2"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["dpo", "--sft", str(tiny_sft), *args, "--out", str(tmp_path / "x")])
        assert exit_.value.code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(err) == 1 and expected in err[0], err


def test_identical_pairs_are_counted_not_dropped(tiny_sft, tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q: {i}?\nA:", "chosen": f" {i}", "rejected": f" {i + 1}" if i % 3 else f" {i}"}
            for i in range(24)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = cli.run(["dpo", "--sft", str(tiny_sft), "--data", str(data), "--eval-fraction", "0.25",
                       "--max-steps", "2", "--batch-size", "4", "--no-progress", "--threads", "1",
                       "--out", str(tmp_path / "out")])  # fmt: skip
    assert summary["n_identical"] == 8 and summary["n_train"] + summary["n_eval"] == 24


@pytest.mark.skipif(not HH.exists(), reason="shared HH-RLHF file not present")
def test_dpo_on_hh_pairs_with_a_tiny_hugging_face_causal_lm(tmp_path):
    from tiny_hf import gpt2_dir

    lm = gpt2_dir(tmp_path / "gpt2")
    sft = tmp_path / "sft"
    cli.run(["sft", "--model", str(lm), "--task.n-train", "32", "--task.n-eval", "8", "--max-length", "64",
             "--batch-size", "8", "--max-steps", "2", "--gold-samples", "0", "--no-progress", "--threads", "1",
             "--out", str(sft)])  # fmt: skip
    out = tmp_path / "dpo"
    summary = cli.run(["dpo", "--sft", str(sft), "--data", str(HH), "--max-length", "128", "--batch-size", "4",
                       "--max-steps", "3", "--eval-every", "100", "--no-progress", "--threads", "1",
                       "--out", str(out)])  # fmt: skip
    assert summary["n_train"] + summary["n_eval"] == 1812 and summary["n_truncated"] > 0
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 1 and all(math.isfinite(rows[0][m]) for m in METRICS)  # step 3 (the last) is logged
    assert json.loads((out / "config.json").read_text())["backbone"]["type"] == "hf_causal"


def test_compare_report_and_export_take_a_dpo_run(dpo_run, tiny_sft, tiny_reward, tmp_path):
    out, _ = dpo_run
    cmp = cli.run(["compare", "--sft", str(tiny_sft), "--policy", str(out), "--reward", str(tiny_reward),
                   "--n-prompts", "8", "--response-length", "8", "--bootstrap", "100", "--no-progress",
                   "--threads", "1", "--out", str(tmp_path / "cmp")])  # fmt: skip
    assert cmp["policy_stage"] == "dpo" and math.isfinite(cmp["gold_diff"]) and cmp["kl_ppo"] > 0
    # A DPO run directory gets its own plots (loss, margins, accuracy, gold), not an empty page.
    page = cli.run(["report", str(out)])["report"]
    assert Path(page).read_text().count("<img alt=") == 4
    exported = cli.run(["export", "--checkpoint", str(out), "--out", str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "config.json").exists() and exported
