"""A Hugging Face causal LM as the policy (`rlhf sft --model PATH`), through the same interface as the built-in GPT.

By hand on a tiny random GPT-2: left padding and the KV cache do not change logits or samples. Then the whole
pipeline on tiny local models: a GPT-2-architecture policy, a BERT-architecture reward model (another vocabulary:
PPO and compare re-encode the rollouts for it), sft -> reward -> ppo -> compare -> sample.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlhf import cli
from rlhf.data.collate import encode_prompt, pad, reencode
from rlhf.data.tokenizer import ByteTokenizer, HFTokenizer, same_vocabulary
from rlhf.errors import UserError
from rlhf.generation import sample
from rlhf.metrics import read_metrics
from rlhf.models.build import load_policy, load_scalar
from rlhf.models.hf import HFCausalLM
from rlhf.stages.ppo import PolicyValue
from tiny_hf import bert_dir, gpt2_dir

V = 61


def tiny_hf_lm(seed: int = 0, arch: str = "gpt2") -> HFCausalLM:
    """A random tiny GPT-2 (learned positions) or Llama (rotary positions, grouped-query attention)."""
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
        )
        return HFCausalLM(GPT2LMHeadModel(config)).eval()
    config = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=0, pad_token_id=0)  # fmt: skip
    return HFCausalLM(LlamaForCausalLM(config)).eval()


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad(rows, 0, side="left")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padding_does_not_change_logits(arch):
    lm = tiny_hf_lm(arch=arch)
    rows = [[5, 9, 11, 3, 7, 8, 2], [4, 4, 6], [13]]
    ids, mask = left_padded(rows)
    with torch.no_grad():
        batched = lm(ids, mask)
        for b, row in enumerate(rows):
            alone = lm(torch.tensor([row]))[0]  # no padding, no mask
            assert torch.allclose(batched[b, -len(row) :], alone, atol=1e-5), b


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_generation_equals_uncached(arch):
    lm = tiny_hf_lm(seed=1, arch=arch)
    ids, mask = left_padded([[5, 9, 11, 3, 7], [4, 4], [13, 2, 8]])
    greedy = sample(lm, ids, mask, 12, eos_id=0, pad_id=0, temperature=0.0)
    greedy_ref = sample(lm, ids, mask, 12, eos_id=0, pad_id=0, temperature=0.0, use_cache=False)
    assert torch.equal(greedy.response_ids, greedy_ref.response_ids)
    assert torch.allclose(greedy.logprobs, greedy_ref.logprobs, atol=1e-5)
    # Sampling too: the same generator state gives the same tokens when the logits are the same.
    hot = sample(lm, ids, mask, 12, 0, 0, 1.0, generator=torch.Generator().manual_seed(3))
    hot_ref = sample(
        lm, ids, mask, 12, 0, 0, 1.0, generator=torch.Generator().manual_seed(3), use_cache=False
    )
    assert torch.equal(hot.response_ids, hot_ref.response_ids)


def test_shared_value_layout_reads_the_same_logits():
    """PPO's 'shared' layout calls hidden() + lm_head itself: the logits must be forward()'s."""
    lm = tiny_hf_lm()
    pv = PolicyValue(lm, None)
    ids, mask = pad([[5, 9, 11], [4, 4, 6, 7, 8]], 0, side="right")
    with torch.no_grad():
        logits, values = pv(ids, mask)
        assert torch.equal(logits, lm(ids, mask)) and values.shape == ids.shape


# ------------------------------------------------------------------------------------------------ tokenizers
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"
    return {
        "gpt2": gpt2_dir(root / "gpt2"),
        "bert": bert_dir(root / "bert"),
        "chat": gpt2_dir(root / "chat", chat_template=template),
    }


def test_chat_template_formats_prompts_where_the_tokenizer_has_one(models):
    plain, chat = HFTokenizer(str(models["gpt2"])), HFTokenizer(str(models["chat"]))
    assert plain.format_prompt("Hi?") == "Hi?" and ByteTokenizer().format_prompt("Hi?") == "Hi?"
    assert chat.format_prompt("Hi?") == "<user>Hi?</user><bot>"
    ids, _ = encode_prompt(chat, "Hi?", 64)
    assert chat.decode(ids) == "<user>Hi?</user><bot>"
    assert not same_vocabulary(plain, chat)  # same ids, but prompts are laid out differently


def test_reencode_for_a_reward_model_with_another_vocabulary(models):
    gpt, bert = HFTokenizer(str(models["gpt2"])), HFTokenizer(str(models["bert"]))
    assert same_vocabulary(gpt, HFTokenizer(str(models["gpt2"]))) and not same_vocabulary(gpt, bert)
    ids, mask = reencode(bert, ["Q: capital of France?", "Q: x"], ["Paris", "y"], [True, False], 64)
    # [CLS] prompt response [SEP]: the EOS ([SEP]) only where the response finished.
    n0, n1 = int(mask[0].sum()), int(mask[1].sum())
    assert ids[0, 0] == bert.bos_id and ids[0, n0 - 1] == bert.eos_id and ids[1, n1 - 1] != bert.eos_id
    assert bert.decode(ids[0, :n0].tolist()) == "q : capital of france? paris"


# ------------------------------------------------------------------------------------------------ the pipeline
TASK = ["--task.n-train", "96", "--task.n-eval", "16", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def pipeline(models, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cli.run(["sft", "--model", str(models["gpt2"]), *TASK, "--max-length", "64", "--batch-size", "16",
             "--max-steps", "6", "--optim.lr", "3e-3", "--optim.warmup-steps", "1", "--gold-samples", "4",
             "--max-new-tokens", "6", "--out", str(runs / "sft")])  # fmt: skip
    cli.run(["reward", "--model", str(models["bert"]), *TASK, "--max-length", "64", "--max-steps", "4",
             "--optim.warmup-steps", "1", "--out", str(runs / "reward")])  # fmt: skip
    ppo = cli.run(["ppo", "--sft", str(runs / "sft"), "--reward", str(runs / "reward"), "--episodes", "16",
                   "--rollout-batch", "8", "--mini-batches", "2", "--ppo-epochs", "1", "--response-length", "6",
                   "--optim.lr", "1e-3", "--task.n-train", "32", "--no-progress", "--threads", "1",
                   "--out", str(runs / "ppo")])  # fmt: skip
    compare = cli.run(["compare", "--sft", str(runs / "sft"), "--policy", str(runs / "ppo"), "--reward",
                       str(runs / "reward"), "--n-prompts", "4", "--response-length", "6", "--threads", "1",
                       "--out", str(runs / "compare")])  # fmt: skip
    return runs, ppo, compare


def test_sft_from_a_local_hf_model_trains_and_reloads(pipeline, models):
    runs, _, _ = pipeline
    config = json.loads((runs / "sft" / "config.json").read_text())
    assert config["backbone"]["type"] == "hf_causal" and config["backbone"]["config"]["model_type"] == "gpt2"
    assert config["tokenizer"] == {"type": "hf", "path": "tokenizer"}
    assert config["parent"] == str(models["gpt2"])
    before = load_file(str(models["gpt2"] / "model.safetensors"))
    after = load_file(str(runs / "sft" / "model.safetensors"))
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(before[name], after[f"model.{name}"]), "SFT did not change the weights"
    model, tok, _ = load_policy(runs / "sft")
    assert isinstance(model, HFCausalLM) and tok.vocab_size == 400
    summary = json.loads((runs / "sft" / "summary.json").read_text())
    assert summary["eval_loss"] < summary["eval_loss_before"]


def test_bert_reward_model_and_ppo_on_the_hf_policy(pipeline):
    runs, ppo, _ = pipeline
    rm, rm_tok, _ = load_scalar(runs / "reward")
    assert type(rm.trunk).__name__ == "HFTrunk" and rm_tok.add_bos  # BERT: [CLS] ... [SEP]
    rows = read_metrics(runs / "ppo" / "metrics.jsonl")
    assert len(rows) == 2 and ppo["updates"] == 2
    assert all(math_ok(r["objective/scores"]) and math_ok(r["loss/value_avg"]) for r in rows)
    # The PPO checkpoint is a policy checkpoint like the SFT one, tokenizer included; weights moved.
    policy, tok, config = load_policy(runs / "ppo")
    assert config["stage"] == "ppo" and (runs / "ppo" / "tokenizer" / "tokenizer.json").exists()
    sft = load_file(str(runs / "sft" / "model.safetensors"))
    out = load_file(str(runs / "ppo" / "model.safetensors"))
    assert any(not torch.equal(sft[k], out[k]) for k in sft)


def test_compare_and_sample_read_the_hf_checkpoints(pipeline, tmp_path):
    runs, _, compare = pipeline
    assert compare["n_prompts"] == 4 and math_ok(compare["proxy_sft"]) and math_ok(compare["kl_ppo"])
    res = cli.run(["sample", "--checkpoint", str(runs / "ppo"), "--prompt", "Q: capital of France?\nA:",
                   "--max-new-tokens", "5", "--out", str(tmp_path / "s")])  # fmt: skip
    assert len(res["samples"]) == 1 and isinstance(res["samples"][0]["response"], str)


def test_reward_model_initialised_from_the_hf_policy(pipeline, tmp_path):
    """`rlhf reward --init` on an HF SFT checkpoint: the causal LM is the reward model's trunk (same vocabulary)."""
    runs, _, _ = pipeline
    cli.run(["reward", "--init", str(runs / "sft"), *TASK, "--max-length", "64", "--max-steps", "2",
             "--out", str(tmp_path / "rm")])  # fmt: skip
    rm, rm_tok, config = load_scalar(tmp_path / "rm")
    _, tok, _ = load_policy(runs / "sft")
    assert isinstance(rm.trunk, HFCausalLM) and config["backbone"]["type"] == "hf_causal"
    assert same_vocabulary(tok, rm_tok)


def test_bad_model_paths_are_user_errors(models, tmp_path):
    with pytest.raises(UserError, match="not a causal language model"):
        cli.run(["sft", "--model", str(models["bert"]), *TASK, "--out", str(tmp_path / "a")])
    with pytest.raises(UserError, match="no config.json"):
        cli.run(["sft", "--model", str(tmp_path / "nowhere"), *TASK, "--out", str(tmp_path / "b")])
    with pytest.raises(UserError, match="--init and --model"):
        cli.run(
            ["sft", "--model", str(models["gpt2"]), "--init", str(tmp_path), *TASK, "--out", str(tmp_path)]
        )


def math_ok(x) -> bool:
    return x is not None and x == x and abs(x) < 1e6
