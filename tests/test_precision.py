"""--gradient-checkpointing gives the plain loss and gradients; --dtype bf16 autocasts forwards while losses and
log-probs stay float32, and the stages run with both options on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlhf import cli
from rlhf.metrics import read_metrics
from rlhf.models.heads import ScalarModel
from rlhf.rl import logprobs_from_logits
from rlhf.stages.common import autocast
from tiny_hf import tiny_causal_lms

V = 47

built_in, hf_gpt2 = tiny_causal_lms(V, n_layer=3)


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    model.zero_grad(set_to_none=True)
    logits = model(ids, mask)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make", [built_in, hf_gpt2], ids=["gpt", "hf-gpt2"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(make):
    torch.manual_seed(0)
    model = make().train()
    ids = torch.randint(0, V, (4, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 8:] = False  # right padding: the mask path, not only the causal kernel
    calls = []
    # The first module inside the first block (HF keeps hooks on the block itself outside the checkpoint).
    first = next(m for n, m in model.named_modules() if n.endswith("h.0.ln_1"))
    first.register_forward_pre_hook(lambda *_: calls.append(1))
    plain_loss, plain = loss_and_grads(model, ids, mask)
    assert len(calls) == 1
    model.gradient_checkpointing_enable()
    ckpt_loss, ckpt = loss_and_grads(model, ids, mask)
    assert len(calls) == 3, "a checkpointed block runs twice: forward, then again in backward"
    assert torch.allclose(ckpt_loss, plain_loss, atol=1e-6)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(ckpt[name], plain[name], atol=1e-6, rtol=1e-5), name


def test_gradient_checkpointing_reaches_a_scalar_models_trunk():
    model = ScalarModel(built_in())
    model.gradient_checkpointing_enable()
    assert model.trunk.grad_checkpointing


def test_bf16_autocast_runs_matmuls_in_bf16_and_logprobs_stay_float32():
    torch.manual_seed(0)
    model = built_in().eval()
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        full = model(ids)
        with autocast("bf16"):
            half = model(ids)
        with autocast("fp32"):
            same = model(ids)
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32 and torch.equal(same, full)
    lp, lp_half = logprobs_from_logits(full, ids), logprobs_from_logits(half, ids)
    assert lp_half.dtype == torch.float32
    assert (lp - lp_half).abs().max() < 0.1  # bf16 keeps ~3 significant digits of the logits
    assert next(model.parameters()).dtype == torch.float32  # weights are never cast


def test_sft_and_ppo_run_with_bf16_and_gradient_checkpointing(tiny_sft, tiny_reward, tmp_path):
    opts = ["--dtype", "bf16", "--gradient-checkpointing", "--no-progress", "--threads", "1"]
    sft = cli.run(["sft", "--init", str(tiny_sft), "--task.n-train", "64", "--task.n-eval", "16",
                   "--max-length", "64", "--max-steps", "3", "--log-every", "1", "--gold-samples", "4",
                   "--max-new-tokens", "4", *opts, "--out", str(tmp_path / "sft")])  # fmt: skip
    assert sft["steps"] == 3
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "sft" / "metrics.jsonl"))
    cli.run(["ppo", "--sft", str(tiny_sft), "--reward", str(tiny_reward), "--episodes", "16", "--rollout-batch",
             "8", "--mini-batches", "1", "--ppo-epochs", "1", "--response-length", "6", "--task.n-train", "32",
             *opts, "--out", str(tmp_path / "ppo")])  # fmt: skip
    first = read_metrics(tmp_path / "ppo" / "metrics.jsonl")[0]
    # Rollout log-probs and the update's are both computed under autocast: the first minibatch's ratio is 1.
    assert first["val/ratio"] == pytest.approx(1.0, abs=1e-6) and first["objective/kl"] == 0.0
    assert math.isfinite(first["loss/policy_avg"]) and math.isfinite(first["loss/value_avg"])
