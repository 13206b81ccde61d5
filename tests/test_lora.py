"""LoRA through peft: the adapter-disabled reference is the base model, merging is exact, and in PPO only the
adapters train (the saved policy differs from the SFT one by a rank-r update of the targeted matrices only),
with no second copy of the policy loaded, and a LoRA PPO run resumes exactly."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import rlhf.stages.ppo as ppo_stage
from rlhf import cli
from rlhf.errors import UserError
from rlhf.metrics import read_metrics
from rlhf.models.build import load_policy, load_scalar
from rlhf.models.lora import AdapterDisabledReference, apply_lora, merge_lora, trainable_params
from tiny_hf import tiny_causal_lms

V = 53

built_in, hf_gpt2 = tiny_causal_lms(V, n_layer=2)


@pytest.mark.parametrize("make", [built_in, hf_gpt2], ids=["gpt", "hf-gpt2"])
def test_disabled_adapters_are_the_base_model_and_merge_is_exact(make):
    torch.manual_seed(0)
    model = make().eval()
    base = copy.deepcopy(model)
    spec = apply_lora(model, rank=4)
    assert spec == {"rank": 4, "alpha": 8.0, "targets": ["c_attn", "c_proj", "c_fc"]}
    # Only adapters train: 2 layers x (c_attn 32->96, attn c_proj 32->32, c_fc 32->128, mlp c_proj 128->32), each
    # r*(in+out) = 4*(128 + 64 + 160 + 160) = 2048 per layer.
    assert trainable_params(model) == 2 * 2048
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at 0 (adapters a no-op); make them matter
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, V, (3, 11))
    with torch.no_grad():
        adapted = model(ids)
        reference = AdapterDisabledReference(model)(ids)
        again = model(ids)
        assert torch.equal(reference, base(ids)), "adapters off must be exactly the base weights"
        assert (adapted - reference).abs().max() > 1e-2
        assert torch.equal(again, adapted), "adapters must be back on after the reference call"
    assert trainable_params(model) == 2 * 2048  # and trainable again
    merge_lora(model)
    assert model.state_dict().keys() == base.state_dict().keys()
    with torch.no_grad():
        assert torch.allclose(model(ids), adapted, atol=1e-5)


def test_bad_targets_and_random_base_are_user_errors(tiny_sft, tmp_path):
    with pytest.raises(UserError, match="--lora-targets nope"):
        apply_lora(built_in(), rank=2, targets=["nope"])
    with pytest.raises(UserError, match="pretrained weights"):
        cli.run(["sft", "--lora-rank", "4", "--out", str(tmp_path / "x"), "--no-progress"])


# ------------------------------------------------------------------------------------------------ stages
def test_lora_sft_and_reward_save_plain_reloadable_checkpoints(tiny_sft, tmp_path):
    common = [
        "--task.n-train",
        "64",
        "--task.n-eval",
        "16",
        "--max-length",
        "64",
        "--no-progress",
        "--threads",
        "1",
    ]
    sft = cli.run(["sft", "--init", str(tiny_sft), "--lora-rank", "4", *common, "--max-steps", "3",
                   "--gold-samples", "4", "--max-new-tokens", "4", "--out", str(tmp_path / "sft")])  # fmt: skip
    assert sft["n_trainable"] < sft["n_params"] / 4
    _, _, config = load_policy(tmp_path / "sft")  # plain names: reloads without LoRA set up
    assert config["lora"]["rank"] == 4
    cli.run(["reward", "--init", str(tiny_sft), "--lora-rank", "2", "--lora-targets", "c_attn", *common,
             "--max-steps", "3", "--out", str(tmp_path / "rm")])  # fmt: skip
    rm, _, rm_config = load_scalar(tmp_path / "rm")
    assert rm_config["lora"]["targets"] == ["c_attn"]
    # The head trains fully (it is not part of the adapted trunk); non-targeted trunk weights stay the SFT's.
    sft_w = load_file(str(tiny_sft / "model.safetensors"))
    rm_w = load_file(str(tmp_path / "rm" / "model.safetensors"))
    assert torch.equal(
        rm_w["trunk.transformer.h.0.mlp.c_fc.weight"], sft_w["transformer.h.0.mlp.c_fc.weight"]
    )
    assert not torch.equal(
        rm_w["trunk.transformer.h.0.attn.c_attn.weight"], sft_w["transformer.h.0.attn.c_attn.weight"]
    )


PPO = ["--episodes", "24", "--rollout-batch", "8", "--mini-batches", "2", "--ppo-epochs", "2", "--response-length",
       "8", "--task.n-train", "64", "--optim.lr", "1e-2", "--lora-rank", "2", "--no-progress", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def lora_ppo(tiny_sft, tiny_reward, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "ppo"
    calls = []
    real = ppo_stage.load_policy
    ppo_stage.load_policy = lambda d: calls.append(d) or real(d)
    try:
        cli.run(["ppo", "--sft", str(tiny_sft), "--reward", str(tiny_reward), *PPO, "--save-every", "1",
                 "--out", str(out)])  # fmt: skip
    finally:
        ppo_stage.load_policy = real
    return out, calls


def test_lora_ppo_trains_only_adapters_against_the_adapter_disabled_reference(lora_ppo, tiny_sft):
    out, calls = lora_ppo
    assert len(calls) == 1, "with LoRA the reference is the policy itself: the SFT policy is loaded once"
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["objective/kl"] == 0.0  # B = 0 at the start: policy == reference exactly
    assert rows[-1]["objective/kl"] != 0.0
    sft, ppo = load_file(str(tiny_sft / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sft.keys() == ppo.keys()
    targets = ("c_attn.weight", "c_proj.weight", "c_fc.weight")
    for name in sft:
        if name.endswith(targets):
            delta = ppo[name] - sft[name]
            assert delta.abs().max() > 0, name
            assert torch.linalg.matrix_rank(delta.double(), atol=1e-6) <= 2, f"{name}: not a rank-2 update"
        else:  # embeddings, norms, biases: frozen
            assert torch.equal(ppo[name], sft[name]), name
    assert json.loads((out / "config.json").read_text())["lora"]["rank"] == 2


def test_lora_ppo_resumes_exactly(lora_ppo, tiny_sft, tiny_reward, tmp_path):
    out, _ = lora_ppo
    resume = out / "resume" / "step-0000001"
    assert any("lora_A" in k for k in load_file(str(resume / "state.safetensors")))
    fresh = tmp_path / "resumed"
    shutil.copytree(resume, fresh / "resume" / "step-0000001")
    (fresh / "resume" / "latest").write_text("step-0000001\n")
    cli.run(
        ["ppo", "--sft", str(tiny_sft), "--reward", str(tiny_reward), *PPO, "--out", str(fresh), "--resume"]
    )
    a, b = load_file(str(out / "model.safetensors")), load_file(str(fresh / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
