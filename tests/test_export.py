"""`rlhf export` / `rlhf import-hf`: Hugging Face loads what we write and gets our outputs (within 1e-4), and the
built-in GPT runs what Hugging Face wrote. Tiny models with every parameter randomised (biases and LayerNorms
too, so a missed transpose or a wrong bias fold cannot hide behind zeros); nothing is fetched from a hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")
import transformers as tf  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

import rlhf.export as ex  # noqa: E402
from rlhf import cli  # noqa: E402
from rlhf.models.build import gpt_backbone_spec, load_policy, save_checkpoint  # noqa: E402
from rlhf.models.gpt import GPT, GPTConfig  # noqa: E402
from rlhf.models.heads import ScalarModel  # noqa: E402
from rlhf.models.hf import HFTrunk  # noqa: E402

ARCH = GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=64)
TOL = 1e-4
PAD, BOS, EOS = 256, 257, 258


def randomise(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)


def byte_batch(right_pad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) (3, 20) of byte-tokenizer ids: BOS + text + EOS; rows 1-2 right-padded when asked."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (3, 20), generator=gen)
    ids[:, 0] = BOS
    mask = torch.ones(3, 20, dtype=torch.long)
    if right_pad:
        for row, n in ((1, 12), (2, 5)):
            ids[row, n - 1] = EOS
            ids[row, n:] = PAD
            mask[row, n:] = 0
    return ids, mask


def save_policy(directory: Path, model: GPT, tokenizer: dict | None = None) -> Path:
    config = {
        "kind": "policy",
        "backbone": gpt_backbone_spec(model.cfg),
        "tokenizer": tokenizer or {"type": "byte"},
    }
    save_checkpoint(directory, model, config)
    return directory


def save_reward(directory: Path, model: ScalarModel, backbone: dict, tokenizer: dict | None = None) -> Path:
    config = {
        "kind": "scalar",
        "backbone": backbone,
        "tokenizer": tokenizer or {"type": "byte"},
        "pooling": model.pooling,
        "reward_norm": {"mean": 0.25, "std": 1.5, "n": 512},
    }
    save_checkpoint(directory, model, config)
    return directory


def gpt_reward(seed: int, pooling: str = "last", vocab_size: int = 259) -> ScalarModel:
    trunk = GPT(GPTConfig(**{**ARCH.__dict__, "vocab_size": vocab_size}))
    model = ScalarModel(trunk, pooling=pooling)
    randomise(model, seed)
    with torch.no_grad():
        model.head.bias.fill_(0.7)  # a bias the fold must carry over
    return model.eval()


def word_tokenizer(directory: Path, words: list[str], **special) -> tf.PreTrainedTokenizerFast:
    """A tiny word-level tokenizer built locally (ids in `words` order), saved to `directory`."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0], **special)
    hf.save_pretrained(str(directory))
    return hf


def run_main(argv: list[str], capsys) -> tuple[int | None, str]:
    try:
        cli.main(argv)
        code = None
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    model = GPT(ARCH)
    randomise(model, 0)
    return save_policy(tmp_path_factory.mktemp("policy"), model)


# ------------------------------------------------------------------------------------------------ export
def test_export_policy_logits_match_transformers(policy_dir, tmp_path):
    out = tmp_path / "hf"
    summary = cli.run(["export", "--checkpoint", str(policy_dir), "--out", str(out)])
    assert summary["format"] == "GPT2LMHeadModel" and summary["check_max_abs_diff"] <= TOL
    hf = tf.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ours, _, _ = load_policy(policy_dir)
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (BOS, EOS, PAD)
    with torch.no_grad():
        ids, _ = byte_batch()
        assert (hf(input_ids=ids).logits - ours.eval()(ids)).abs().max() <= TOL
        ids, mask = byte_batch(right_pad=True)
        real = mask.bool()
        diff = hf(input_ids=ids, attention_mask=mask).logits[real] - ours(ids, mask)[real]
        assert diff.abs().max() <= TOL
        # Left padding: equal only with the position ids the README tells HF users to pass.
        left_ids, left_mask = ids.clone(), mask.clone()
        for row in range(3):
            n = int(mask[row].sum())
            left_ids[row] = torch.cat([ids[row, n:], ids[row, :n]])
            left_mask[row] = torch.cat([mask[row, n:], mask[row, :n]])
        pos = (left_mask.cumsum(-1) - 1).clamp(min=0)
        theirs = hf(input_ids=left_ids, attention_mask=left_mask, position_ids=pos).logits
        assert (theirs[left_mask.bool()] - ours(left_ids, left_mask)[left_mask.bool()]).abs().max() <= TOL
    assert not (out / "tokenizer.json").exists()  # the byte tokenizer: nothing HF cannot read
    assert (
        "UTF-8 bytes" in (out / "README.md").read_text() and "position_ids" in (out / "README.md").read_text()
    )
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary directory left beside it


def test_export_reward_score_matches_sequence_classification(tmp_path):
    model = gpt_reward(1)
    ckpt = save_reward(tmp_path / "rm", model, gpt_backbone_spec(model.trunk.cfg))
    out = tmp_path / "hf"
    summary = cli.run(["export", "--checkpoint", str(ckpt), "--out", str(out)])
    assert summary["format"] == "GPT2ForSequenceClassification" and summary["check_max_abs_diff"] <= TOL
    hf = tf.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.num_labels == 1 and hf.config.pad_token_id == PAD
    assert hf.config.rlhf_reward_norm == {"mean": 0.25, "std": 1.5, "n": 512}
    for right_pad in (False, True):
        ids, mask = byte_batch(right_pad)
        with torch.no_grad():
            theirs = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
            assert (theirs - model.score(ids, mask)).abs().max() <= TOL


def test_fold_head_bias_is_exact_on_layer_norm_output():
    gen = torch.Generator().manual_seed(0)
    x, beta, w = (
        torch.randn(5, 8, generator=gen),
        torch.randn(8, generator=gen),
        torch.randn(1, 8, generator=gen),
    )
    b = torch.tensor([-1.3])
    folded = ex.fold_head_bias(beta, w, b)
    assert torch.allclose((x + folded) @ w.T, (x + beta) @ w.T + b, atol=1e-5)


def test_export_reward_with_pad_equal_to_eos_gets_its_own_pad_token(tmp_path):
    ckpt = tmp_path / "rm"
    words = ["<|endoftext|>", "hello", "world", "yes", "no"]
    word_tokenizer(ckpt / "tokenizer", words, eos_token=words[0], bos_token=words[0])  # GPT-2 style: no pad
    model = gpt_reward(2, vocab_size=len(words))
    save_reward(ckpt, model, gpt_backbone_spec(model.trunk.cfg), {"type": "hf", "path": "tokenizer"})
    out = tmp_path / "hf"
    summary = ex.export_checkpoint(ckpt, out)
    assert summary["added_pad_token"] and summary["check_max_abs_diff"] <= TOL
    hf = tf.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    hf_tok = tf.AutoTokenizer.from_pretrained(str(out))
    assert hf.config.pad_token_id == hf_tok.pad_token_id == len(words) != hf_tok.eos_token_id
    ids = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0]])  # each ends with EOS (id 0); row 1 padded after it
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    hf_ids = ids.masked_fill(mask == 0, hf.config.pad_token_id)
    with torch.no_grad():
        theirs = hf(input_ids=hf_ids, attention_mask=mask).logits.squeeze(-1)
        assert (theirs - model.score(ids, mask)).abs().max() <= TOL


def test_export_reward_on_hf_trunk_writes_trunk_and_head(tmp_path):
    ckpt = tmp_path / "rm"
    words = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "good", "bad"]
    word_tokenizer(ckpt / "tokenizer", words, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")
    cfg = tf.BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(3)
    model = ScalarModel(HFTrunk(tf.AutoModel.from_config(cfg)), pooling="mean")
    randomise(model, 3)
    save_reward(ckpt, model, {"type": "hf", "config": cfg.to_dict()}, {"type": "hf", "path": "tokenizer"})
    out = tmp_path / "hf"
    summary = ex.export_checkpoint(ckpt, out)
    assert summary["format"] == "trunk+score_head" and summary["check_max_abs_diff"] <= TOL
    assert (out / ex.HEAD_FILE).is_file() and tf.AutoTokenizer.from_pretrained(str(out)).sep_token == "[SEP]"
    assert json.loads((out / "config.json").read_text())["rlhf_pooling"] == "mean"


def test_export_hf_causal_policy_and_reward_on_it(tmp_path):
    from rlhf.models.hf import HFCausalLM

    words = ["<|endoftext|>", "one", "two", "three", "four"]
    cfg = tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=len(words))
    lm = HFCausalLM(tf.GPT2LMHeadModel(cfg))
    randomise(lm, 8)
    spec, tok_spec = {"type": "hf_causal", "config": cfg.to_dict()}, {"type": "hf", "path": "tokenizer"}
    word_tokenizer(tmp_path / "pol" / "tokenizer", words, eos_token=words[0], bos_token=words[0])
    save_checkpoint(tmp_path / "pol", lm, {"kind": "policy", "backbone": spec, "tokenizer": tok_spec})
    assert ex.export_checkpoint(tmp_path / "pol", tmp_path / "pol-hf")["format"] == "GPT2LMHeadModel"
    ids, mask = torch.tensor([[1, 2, 3, 4, 0], [4, 3, 0, 0, 0]]), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    hf = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path / "pol-hf")).eval()
    with torch.no_grad():
        diff = hf(input_ids=ids, attention_mask=mask).logits - lm.eval()(ids, mask)
    assert diff[mask.bool()].abs().max() <= TOL

    rm = ScalarModel(lm, pooling="last").eval()
    word_tokenizer(tmp_path / "rm" / "tokenizer", words, eos_token=words[0], bos_token=words[0])
    save_reward(tmp_path / "rm", rm, spec, tok_spec)
    assert ex.export_checkpoint(tmp_path / "rm", tmp_path / "rm-hf")["format"] == "trunk+score_head"
    # What the export's README tells a user to do: AutoModel + the head file, read at the last real token.
    trunk = tf.AutoModel.from_pretrained(str(tmp_path / "rm-hf")).eval()
    head = load_file(str(tmp_path / "rm-hf" / ex.HEAD_FILE))
    with torch.no_grad():
        values = trunk(input_ids=ids, attention_mask=mask).last_hidden_state @ head["weight"].T + head["bias"]
        theirs = values.squeeze(-1)[torch.arange(2), mask.sum(1) - 1]
        assert (theirs - rm.score(ids, mask)).abs().max() <= TOL


def test_failed_check_or_foreign_out_dir_leaves_nothing(policy_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ex, "CHECK_TOL", -1.0)  # every check fails
    with pytest.raises(RuntimeError, match="export check failed"):
        ex.export_checkpoint(policy_dir, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []
    code, err = run_main(["export", "--checkpoint", str(policy_dir), "--out", str(policy_dir)], capsys)
    assert code == 2 and "not an earlier rlhf export" in err and len(err.strip().splitlines()) == 1
    assert (policy_dir / "model.safetensors").is_file()


def test_export_refuses_mean_pooling_and_missing_checkpoint(tmp_path, capsys):
    model = gpt_reward(4, pooling="mean")
    ckpt = save_reward(tmp_path / "rm", model, gpt_backbone_spec(model.trunk.cfg))
    code, err = run_main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")], capsys)
    assert code == 2 and "pooling 'mean'" in err and len(err.strip().splitlines()) == 1
    code, err = run_main(
        ["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")], capsys
    )
    assert (
        code == 2 and err.startswith("error: ") and "not found" in err and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------------------------------------ import
def hf_gpt2(directory: Path, seed: int, **overrides) -> tf.GPT2LMHeadModel:
    fields = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=259, bos_token_id=BOS,
                  eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
    cfg = tf.GPT2Config(**{**fields, **overrides})
    model = tf.GPT2LMHeadModel(cfg)
    randomise(model, seed)
    model.save_pretrained(str(directory))
    return model.eval()


def test_import_hf_gpt2_logits_match(tmp_path):
    hf = hf_gpt2(tmp_path / "hf", 5)
    summary = cli.run(["import-hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "imp")])
    assert summary["tokenizer"] == "byte" and summary["check_max_abs_diff"] <= TOL
    ours, tok, config = load_policy(tmp_path / "imp")
    assert config["kind"] == "policy" and config["backbone"]["arch"]["block_size"] == 64 and tok.pad_id == PAD
    with torch.no_grad():
        for right_pad in (False, True):
            ids, mask = byte_batch(right_pad)
            real = mask.bool()
            diff = ours.eval()(ids, mask)[real] - hf(input_ids=ids, attention_mask=mask).logits[real]
            assert diff.abs().max() <= TOL


def test_import_copies_the_hf_tokenizer(tmp_path):
    words = ["<|endoftext|>", "the", "cat", "sat"]
    word_tokenizer(tmp_path / "hf", words, eos_token=words[0], bos_token=words[0])
    hf_gpt2(tmp_path / "hf", 6, vocab_size=len(words), bos_token_id=0, eos_token_id=0, pad_token_id=None)
    ex.import_hf_gpt2(tmp_path / "hf", tmp_path / "imp")
    _, tok, config = load_policy(tmp_path / "imp")
    assert config["tokenizer"] == {"type": "hf", "path": "tokenizer"}
    assert tok.encode("the cat sat") == [1, 2, 3] and tok.eos_id == 0


def test_export_then_import_gives_identical_weights(policy_dir, tmp_path):
    ex.export_checkpoint(policy_dir, tmp_path / "hf")
    ex.import_hf_gpt2(tmp_path / "hf", tmp_path / "back")
    a, _, ca = load_policy(policy_dir)
    b, _, cb = load_policy(tmp_path / "back")
    assert ca["backbone"] == cb["backbone"]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_imported_policy_trains_and_samples(tmp_path):
    hf_gpt2(tmp_path / "hf", 7)
    ex.import_hf_gpt2(tmp_path / "hf", tmp_path / "imp")
    common = ["--no-progress", "--threads", "1"]
    sft = cli.run([
        "sft", "--init", str(tmp_path / "imp"), "--out", str(tmp_path / "sft"), "--max-steps", "2",
        "--task.n-train", "16", "--task.n-eval", "8", "--gold-samples", "2", "--max-new-tokens", "4",
        "--max-length", "48", "--batch-size", "8", *common,
    ])  # fmt: skip
    assert sft["steps"] == 2
    out = cli.run(["sample", "--checkpoint", str(tmp_path / "sft"), "--out", str(tmp_path / "s"),
                   "--max-new-tokens", "4", "--prompt", "Q: 1+1?", *common])  # fmt: skip
    assert len(out["samples"]) == 1


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: tf.BertModel(tf.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=32)).save_pretrained(str(d)),
         "model_type 'bert' is not 'gpt2'"),
        (lambda d: hf_gpt2(d, 0, scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
        (lambda d: hf_gpt2(d, 0, activation_function="relu"), "activation_function='relu'"),
        (lambda d: hf_gpt2(d, 0, n_inner=48), "n_inner=48"),
        (lambda d: None, "not a local Hugging Face model directory"),
    ],
    ids=["bert", "inverse-layer-scaling", "relu", "n_inner", "missing"],
)  # fmt: skip
def test_import_refuses_what_the_built_in_gpt_cannot_run(make, expect, tmp_path, capsys):
    make(tmp_path / "hf")
    code, err = run_main(
        ["import-hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "imp")], capsys
    )
    assert code == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "imp").exists()
