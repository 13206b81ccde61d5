"""Conversion between rlhf checkpoints and Hugging Face model directories (`rlhf export`, `rlhf import-hf`).

The built-in GPT already uses GPT-2's parameter names, so the conversion is a rename plus a transpose: Hugging
Face GPT-2 keeps its projections in `Conv1D` modules whose weight is (in, out), our `nn.Linear` keeps (out, in).
Everything else (LayerNorm eps 1e-5, tanh GELU = `gelu_new`, 4x MLP, tied embeddings, 1/sqrt(head size) attention
scaling) is the same architecture, which `gpt_config_from_hf` checks field by field before importing.

- policy (built-in GPT)          -> `GPT2LMHeadModel` directory
- reward model on a GPT trunk    -> `GPT2ForSequenceClassification` (num_labels=1); our head's bias is folded
                                    into `ln_f.bias` because HF's `score` layer has none
- policy (Hugging Face causal LM) -> that model's own directory (`save_pretrained`)
- reward model on an HF trunk    -> the trunk via `save_pretrained` + `score_head.safetensors` (HF has no class
  (encoder or causal LM)            that pools at the last real token of an encoder, and a Llama-style final
                                    RMSNorm has no bias to fold ours into, so the head stays separate)

LoRA runs need nothing here: stages save their model checkpoints with the adapters merged (`models/lora.py`).

Positions: our GPT counts positions over real tokens only, HF's GPT-2 counts every slot unless given
`position_ids`. Outputs agree for unpadded and right-padded input; for left padding pass
`position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)` to the HF model.

An export is assembled in a temporary directory beside `--out`, checked against rlhf's own outputs on a probe
batch, and renamed into place only then: a crash or a failed check leaves no half-written directory.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from rlhf import __version__
from rlhf.checkpoint import read_json, save_tensors, write_json
from rlhf.config import ExportConfig, ImportHFConfig
from rlhf.data.tokenizer import ByteTokenizer, Tokenizer
from rlhf.errors import UserError
from rlhf.models.build import (
    gpt_backbone_spec,
    load_policy,
    load_scalar,
    load_state,
    save_checkpoint,
    save_tokenizer,
)
from rlhf.models.gpt import GPT, GPTConfig
from rlhf.models.heads import ScalarModel, last_token_index

# Weights HF GPT-2 stores in Conv1D (in, out) and we store in nn.Linear (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HEAD_FILE = "score_head.safetensors"
# (checkpoint kind, backbone type) pairs `rlhf export` converts.
EXPORTABLE = {(k, b) for k in ("policy", "scalar") for b in ("gpt", "hf_causal")} | {("scalar", "hf")}
# A check failure means a conversion bug, not float noise: a wrong transpose or fold is off by O(1).
CHECK_TOL = 1e-3


def _transformers():
    from rlhf.models.hf import _transformers as tf

    return tf()


# ------------------------------------------------------------------------------------------------ state dicts
def gpt_to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our GPT's state dict (`transformer.*`, `lm_head.weight`) with HF GPT-2's Conv1D weights transposed."""
    return {k: v.t().contiguous() if k.endswith(CONV1D_WEIGHTS) else v for k, v in state.items()}


def hf_to_gpt_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-2's state dict in our layout (the same transpose undone), as float32."""
    return {k: (v.t() if k.endswith(CONV1D_WEIGHTS) else v).float().contiguous() for k, v in state.items()}


def fold_head_bias(ln_f_bias: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`ln_f.bias` that makes a bias-free head `w.h` give what our head `w.h + b` gives.

    ln_f's output feeds only the score head, so moving its bias along w by b*w/|w|^2 adds exactly
    w.(b*w/|w|^2) = b to the score: w.(x + beta') = w.(x + beta) + b. Computed in float64, stored as float32.
    """
    w = weight.reshape(-1).double()
    norm2 = float(w @ w)
    if norm2 == 0.0:
        raise UserError("the reward head's weight is all zeros: its bias cannot be folded into ln_f")
    return (ln_f_bias.double() + float(bias) * w / norm2).to(ln_f_bias.dtype)


# ------------------------------------------------------------------------------------------------ configs
def tokenizer_ids(tok: Tokenizer) -> dict:
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}


def hf_gpt2_config(arch: GPTConfig, ids: dict, architecture: str, extra: dict):
    """GPT2Config describing exactly our GPT (one dropout probability maps to HF's three)."""
    tf = _transformers()
    return tf.GPT2Config(
        vocab_size=arch.vocab_size,
        n_positions=arch.block_size,
        n_embd=arch.n_embd,
        n_layer=arch.n_layer,
        n_head=arch.n_head,
        n_inner=None,  # 4 * n_embd, as our MLP
        activation_function="gelu_new",  # tanh GELU, as our MLP
        resid_pdrop=arch.dropout,
        embd_pdrop=arch.dropout,
        attn_pdrop=arch.dropout,
        layer_norm_epsilon=1e-5,  # nn.LayerNorm's default
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        tie_word_embeddings=True,
        architectures=[architecture],
        **ids,
        **extra,
    )


def gpt_config_from_hf(hf_cfg, source: Path) -> GPTConfig:
    """Our GPTConfig for a HF GPT-2 config; a UserError naming the first field the built-in GPT cannot run."""
    where = f"{source / 'config.json'}"
    n_embd, n_head = hf_cfg.n_embd, hf_cfg.n_head
    required = {
        "add_cross_attention": False,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "tie_word_embeddings": True,
        "layer_norm_epsilon": 1e-5,
    }
    for name, want in required.items():
        got = getattr(hf_cfg, name, want)
        if got != want:
            raise UserError(f"{where}: {name}={got!r} is not supported by the built-in GPT (needs {want!r})")
    if hf_cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(
            f"{where}: activation_function={hf_cfg.activation_function!r} is not supported by the built-in GPT "
            "(needs the tanh GELU: 'gelu_new' or 'gelu_pytorch_tanh')"
        )
    if hf_cfg.n_inner not in (None, 4 * n_embd):
        raise UserError(
            f"{where}: n_inner={hf_cfg.n_inner} is not supported by the built-in GPT (needs 4 * n_embd = {4 * n_embd})"
        )
    if n_embd % n_head:
        raise UserError(f"{where}: n_embd={n_embd} is not divisible by n_head={n_head}")
    drops = {hf_cfg.resid_pdrop, hf_cfg.embd_pdrop, hf_cfg.attn_pdrop}
    if len(drops) > 1:  # the built-in GPT has one dropout probability; it only matters for SFT
        print(
            f"import-hf: dropout probabilities {sorted(drops)} differ; using resid_pdrop={hf_cfg.resid_pdrop}"
        )
    return GPTConfig(
        vocab_size=hf_cfg.vocab_size,
        block_size=hf_cfg.n_positions,
        n_layer=hf_cfg.n_layer,
        n_head=n_head,
        n_embd=n_embd,
        dropout=float(hf_cfg.resid_pdrop),
    )


# ------------------------------------------------------------------------------------------------ export
def _probe(vocab_size: int, pad_id: int, block_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) (2, T): one full row and one right-padded row of random real tokens (never the pad id,
    which HF's sequence classifier uses to find the last real token)."""
    T = max(2, min(16, block_size))
    gen = torch.Generator().manual_seed(seed)
    real_vocab = vocab_size - 1 if pad_id < vocab_size else vocab_size
    ids = torch.randint(0, real_vocab, (2, T), generator=gen)
    ids = ids + (ids >= pad_id).long()  # skip over the pad id
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T // 2 :] = 0
    ids[1, T // 2 :] = pad_id
    return ids, mask


def _export_marker(checkpoint: Path, config: dict, what: str) -> dict:
    return {
        "source": str(checkpoint),
        "kind": config.get("kind"),
        "format": what,
        "rlhf_version": __version__,
    }


def _save_hf_tokenizer(checkpoint: Path, config: dict, tmp: Path, add_pad: bool = False) -> int | None:
    """Copy the checkpoint's HF tokenizer into the export (HF reads it from the model directory).

    `add_pad`: give the tokenizer a pad token distinct from EOS and return its id (see `_export_scalar_gpt`).
    """
    tf = _transformers()
    tok = tf.AutoTokenizer.from_pretrained(str(checkpoint / config["tokenizer"]["path"]))
    pad = None
    if add_pad:
        tok.add_special_tokens({"pad_token": "<|pad|>"})
        pad = int(tok.pad_token_id)
    tok.save_pretrained(str(tmp))
    return pad


def _export_policy_gpt(model: GPT, tok: Tokenizer, checkpoint: Path, config: dict, tmp: Path) -> dict:
    tf = _transformers()
    extra = {"rlhf_export": _export_marker(checkpoint, config, "GPT2LMHeadModel")}
    if tok.name == "byte":
        extra["rlhf_tokenizer"] = "byte"
    hf_cfg = hf_gpt2_config(model.cfg, tokenizer_ids(tok), "GPT2LMHeadModel", extra)
    hf = tf.GPT2LMHeadModel(hf_cfg)
    hf.load_state_dict(gpt_to_hf_state(model.state_dict()), strict=True)
    hf.save_pretrained(str(tmp))
    if tok.name == "hf":
        _save_hf_tokenizer(checkpoint, config, tmp)
    return {"format": "GPT2LMHeadModel", "n_params": model.num_params()}


def _export_policy_hf(model: nn.Module, checkpoint: Path, config: dict, tmp: Path) -> dict:
    """A Hugging Face causal-LM policy (`HFCausalLM`): the wrapped model is already in HF's format."""
    hf = model.model
    hf.config.rlhf_export = _export_marker(checkpoint, config, type(hf).__name__)
    hf.save_pretrained(str(tmp))
    _save_hf_tokenizer(checkpoint, config, tmp)
    return {"format": type(hf).__name__, "n_params": sum(p.numel() for p in model.parameters())}


def _check_policy(model: nn.Module, tok: Tokenizer, tmp: Path, seed: int) -> float:
    """Max |logit difference| between rlhf and `AutoModelForCausalLM.from_pretrained(tmp)` at real tokens."""
    tf = _transformers()
    hf = tf.AutoModelForCausalLM.from_pretrained(str(tmp)).eval()
    block = getattr(hf.config, "max_position_embeddings", None) or 16
    ids, mask = _probe(hf.config.vocab_size, tok.pad_id, block, seed)
    with torch.no_grad():
        ours = model.eval()(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    return float((ours[real] - theirs[real]).abs().max())


def _export_scalar_gpt(model: ScalarModel, tok: Tokenizer, checkpoint: Path, config: dict, tmp: Path) -> dict:
    """GPT trunk + scalar head -> GPT2ForSequenceClassification with the head's bias folded into ln_f.

    HF pools at the last token that is not `pad_token_id`. Our score is read at the last real token, which is
    the appended EOS; a tokenizer whose pad id equals its EOS id (GPT-2's) would make HF skip that EOS, so the
    export then gets its own pad token (one more embedding row, never read under causal attention).
    """
    tf = _transformers()
    if model.pooling != "last":
        raise UserError(
            f"{checkpoint}: pooling {model.pooling!r} has no Hugging Face sequence-classification equivalent "
            "(it reads the last token); export a --pooling last reward model"
        )
    trunk: GPT = model.trunk
    arch = dataclasses.replace(trunk.cfg)
    ids = tokenizer_ids(tok)
    state = {k.removeprefix("trunk."): v for k, v in model.state_dict().items() if k.startswith("trunk.")}
    state.pop("lm_head.weight")  # the classifier has no LM head; wte stays
    state["transformer.ln_f.bias"] = fold_head_bias(
        state["transformer.ln_f.bias"], model.head.weight.detach(), model.head.bias.detach()
    )
    state["score.weight"] = model.head.weight.detach().clone()
    pad = None
    if tok.name == "hf" and tok.pad_id == tok.eos_id:
        pad = _save_hf_tokenizer(checkpoint, config, tmp, add_pad=True)
        ids["pad_token_id"] = pad
        if pad >= arch.vocab_size:
            wte = state["transformer.wte.weight"]
            extra_rows = wte.new_zeros(pad + 1 - arch.vocab_size, wte.size(1))
            state["transformer.wte.weight"] = torch.cat([wte, extra_rows])
            arch.vocab_size = pad + 1
    elif tok.name == "hf":
        _save_hf_tokenizer(checkpoint, config, tmp)
    extra = {
        "rlhf_export": _export_marker(checkpoint, config, "GPT2ForSequenceClassification"),
        "rlhf_reward_norm": config.get("reward_norm"),
        "num_labels": 1,
    }
    if tok.name == "byte":
        extra["rlhf_tokenizer"] = "byte"
    hf_cfg = hf_gpt2_config(arch, ids, "GPT2ForSequenceClassification", extra)
    hf = tf.GPT2ForSequenceClassification(hf_cfg)
    hf.load_state_dict(gpt_to_hf_state(state), strict=True)
    hf.save_pretrained(str(tmp))
    return {
        "format": "GPT2ForSequenceClassification",
        "n_params": sum(p.numel() for p in hf.parameters()),
        "pad_token_id": ids["pad_token_id"],
        "added_pad_token": pad is not None,
    }


def _check_scalar_gpt(model: ScalarModel, our_pad: int, tmp: Path, seed: int) -> float:
    """Max |score difference| between `ScalarModel.score` and `AutoModelForSequenceClassification` (right padding)."""
    tf = _transformers()
    hf = tf.AutoModelForSequenceClassification.from_pretrained(str(tmp)).eval()
    pad = int(hf.config.pad_token_id)
    ids, mask = _probe(model.trunk.cfg.vocab_size, pad, hf.config.n_positions, seed)
    with torch.no_grad():
        # Our side pads with its own pad id (the added HF pad token may lie past our vocabulary).
        ours = model.eval().score(ids.masked_fill(mask == 0, our_pad), mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    return float((ours - theirs).abs().max())


def _export_scalar_hf(model: ScalarModel, checkpoint: Path, config: dict, tmp: Path) -> dict:
    """HF trunk + our head: the trunk as a plain HF model, the head beside it (`score_head.safetensors`).

    A causal-LM trunk is saved with its LM head (unused); `AutoModel.from_pretrained` reads just its base model.
    """
    trunk = model.trunk.model
    trunk.config.rlhf_export = _export_marker(checkpoint, config, "trunk+score_head")
    trunk.config.rlhf_pooling = model.pooling
    trunk.config.rlhf_reward_norm = config.get("reward_norm")
    trunk.config.rlhf_score_head = HEAD_FILE
    trunk.save_pretrained(str(tmp))
    save_tensors(tmp / HEAD_FILE, {"weight": model.head.weight, "bias": model.head.bias})
    _save_hf_tokenizer(checkpoint, config, tmp)
    return {"format": "trunk+score_head", "n_params": sum(p.numel() for p in model.parameters())}


def _check_scalar_hf(model: ScalarModel, tok: Tokenizer, tmp: Path, seed: int) -> float:
    """Max |score difference| recomputing the score as the export's README says: AutoModel + head + pooling."""
    from safetensors.torch import load_file

    tf = _transformers()
    trunk = tf.AutoModel.from_pretrained(str(tmp)).eval()
    head = load_file(str(tmp / HEAD_FILE))
    ids, mask = _probe(trunk.config.vocab_size, tok.pad_id, 16, seed)
    with torch.no_grad():
        hidden = trunk(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        values = (hidden @ head["weight"].T + head["bias"]).squeeze(-1)  # (B, T)
        if model.pooling == "last":
            theirs = values.gather(1, last_token_index(mask).unsqueeze(1)).squeeze(1)
        else:
            theirs = (values * mask).sum(1) / mask.sum(1)
        ours = model.eval().score(ids, mask)
    return float((ours - theirs).abs().max())


def _readme(kind: str, backbone: str, tok: Tokenizer, checkpoint: Path, info: dict) -> str:
    """The export's README.md: how to load it and read the same numbers rlhf computes."""
    fmt = info["format"]
    lines = [f"# Exported by rlhf {__version__} from `{checkpoint}` ({kind} checkpoint)", ""]
    if kind == "policy":
        lines += [f"A `{fmt}`: load with `transformers.AutoModelForCausalLM.from_pretrained(DIR)`."]
    elif fmt == "GPT2ForSequenceClassification":
        lines += [
            "Load with `transformers.AutoModelForSequenceClassification.from_pretrained(DIR)`; the reward is",
            "`logits[:, 0]`, read at the last non-pad token (the EOS the reward model was trained with).",
            "rlhf's reward head bias is folded into `transformer.ln_f.bias`: the score is exact, but the last",
            "hidden state is shifted along the score direction, so do not reuse it as features.",
            "PPO's normalised reward is `(r - rlhf_reward_norm.mean) / rlhf_reward_norm.std` (config.json).",
        ]
    else:
        lines += [
            "The trunk loads with `transformers.AutoModel.from_pretrained(DIR)`; the reward head is in",
            f"`{HEAD_FILE}` (`weight` (1, C), `bias` (1,)): `values = last_hidden_state @ weight.T + bias`,",
            f"pooled with `{info['pooling']}` (last = at the last real token, the appended EOS/SEP; mean = over",
            "real tokens). PPO's normalised reward is `(r - rlhf_reward_norm.mean) / rlhf_reward_norm.std`.",
        ]
    if tok.name == "byte":
        lines += [
            "",
            "Tokenizer: rlhf's byte tokenizer (no HF tokenizer files): ids 0-255 are the UTF-8 bytes of the text,",
            f"{tok.pad_id} pad, {tok.bos_id} BOS, {tok.eos_id} EOS; inputs start with BOS, responses end with EOS.",
        ]
    if backbone != "hf":  # decoders: rlhf's positions skip padding (an encoder trunk uses HF's own positions)
        lines += [
            "",
            "rlhf counts positions over real tokens only: outputs match for unpadded or right-padded input; for",
            "left padding pass `position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0)`.",
        ]
    return "\n".join(lines) + "\n"


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`, replacing a previous export (and nothing else) without a gap."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_out(out: Path) -> None:
    """Refuse to replace anything but an empty directory or an earlier export (never a checkpoint or a run)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    cfg_path = out / "config.json"
    if not (cfg_path.exists() and "rlhf_export" in read_json(cfg_path)):
        raise UserError(f"--out {out}: exists and is not an earlier rlhf export; choose another --out")


def export_checkpoint(checkpoint: Path, out: Path, check: bool = True, seed: int = 0) -> dict:
    """Write the Hugging Face directory `out` for an rlhf checkpoint; returns the summary."""
    checkpoint, out = Path(checkpoint), Path(out)
    config = read_json(checkpoint / "config.json") if checkpoint.is_dir() else None
    if config is None:
        raise UserError(f"{checkpoint}: checkpoint directory not found")
    kind, backbone = config.get("kind"), config.get("backbone", {}).get("type")
    if (kind, backbone) not in EXPORTABLE:
        raise UserError(
            f"{checkpoint}: cannot export a {kind!r} checkpoint on a {backbone!r} backbone; rlhf export handles "
            "policies (built-in GPT or Hugging Face causal LM) and reward models"
        )
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with torch.no_grad():
            if kind == "policy":
                model, tok, config = load_policy(checkpoint)
                if backbone == "gpt":
                    info = _export_policy_gpt(model, tok, checkpoint, config, tmp)
                else:
                    info = _export_policy_hf(model, checkpoint, config, tmp)
                diff = _check_policy(model, tok, tmp, seed) if check else None
            else:
                model, tok, config = load_scalar(checkpoint)
                if backbone == "gpt":
                    info = _export_scalar_gpt(model, tok, checkpoint, config, tmp)
                    diff = _check_scalar_gpt(model, tok.pad_id, tmp, seed) if check else None
                else:
                    info = {**_export_scalar_hf(model, checkpoint, config, tmp), "pooling": model.pooling}
                    diff = _check_scalar_hf(model, tok, tmp, seed) if check else None
        if diff is not None and not diff <= CHECK_TOL:
            raise RuntimeError(
                f"export check failed: outputs differ from rlhf's by {diff:.3g} (> {CHECK_TOL}); nothing written"
            )
        (tmp / "README.md").write_text(_readme(kind, backbone, tok, checkpoint, info))
        summary = {"checkpoint": str(checkpoint), "kind": kind, **info, "check_max_abs_diff": diff}
        write_json(tmp / "summary.json", summary)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def run_export(cfg: ExportConfig) -> dict:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    s = export_checkpoint(cfg.checkpoint, cfg.out, check=cfg.check, seed=cfg.seed)
    diff = s["check_max_abs_diff"]
    checked = f"; outputs match rlhf's within {diff:.2g}" if diff is not None else ""
    print(f"export: {s['kind']} checkpoint {cfg.checkpoint} -> {s['format']}{checked}")
    print(f"outputs: {cfg.out}/ (config.json, model.safetensors, README.md, summary.json)")
    return s


# ------------------------------------------------------------------------------------------------ import
def _import_tokenizer(model_dir: Path, arch: GPTConfig, hf_cfg) -> Tokenizer:
    """The directory's HF tokenizer, or the byte tokenizer when there is none and the ids are exactly its ids."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    if any((model_dir / n).exists() for n in names):
        from rlhf.data.tokenizer import HFTokenizer

        tok: Tokenizer = HFTokenizer(str(model_dir))
        if tok.vocab_size > arch.vocab_size:
            raise UserError(
                f"{model_dir}: the tokenizer has {tok.vocab_size} tokens but the model only {arch.vocab_size}"
            )
        return tok
    byte = ByteTokenizer()
    ids = (hf_cfg.vocab_size, hf_cfg.pad_token_id, hf_cfg.bos_token_id, hf_cfg.eos_token_id)
    if ids == (byte.vocab_size, byte.pad_id, byte.bos_id, byte.eos_id):
        return byte
    raise UserError(
        f"{model_dir}: no tokenizer files (tokenizer.json / vocab.json) and the vocabulary is not rlhf's byte "
        "tokenizer's; put the model's tokenizer files in the directory"
    )


def import_hf_gpt2(model_dir: Path, out: Path, seed: int = 0) -> dict:
    """Write a built-in GPT policy checkpoint into `out` from a local HF GPT-2 directory; returns the summary."""
    tf = _transformers()
    model_dir, out = Path(model_dir), Path(out)
    raw = read_json(model_dir / "config.json") if model_dir.is_dir() else None
    if raw is None:
        raise UserError(f"{model_dir}: not a local Hugging Face model directory; models are never downloaded")
    if raw.get("model_type") != "gpt2":
        raise UserError(
            f"{model_dir / 'config.json'}: model_type {raw.get('model_type')!r} is not 'gpt2'; "
            "rlhf import-hf reads GPT-2 (GPT2LMHeadModel) directories"
        )
    hf_cfg = tf.GPT2Config.from_pretrained(str(model_dir))
    arch = gpt_config_from_hf(hf_cfg, model_dir)
    tok = _import_tokenizer(model_dir, arch, hf_cfg)
    if not any(model_dir.glob("*.safetensors")):
        raise UserError(f"{model_dir}: no .safetensors weights (rlhf never unpickles .bin files)")
    hf, info = tf.GPT2LMHeadModel.from_pretrained(
        str(model_dir), use_safetensors=True, output_loading_info=True
    )
    hf = hf.float().eval()  # the built-in GPT computes in float32, whatever dtype the weights were saved in
    missing = [k for k in info["missing_keys"] if k != "lm_head.weight"]  # lm_head is tied to wte
    if missing or info.get("mismatched_keys"):
        raise UserError(
            f"{model_dir}: weights do not match config.json (missing {missing[:3]}, "
            f"mismatched {list(info.get('mismatched_keys') or [])[:3]})"
        )
    model = GPT(arch).eval()
    load_state(model, hf_to_gpt_state(hf.state_dict()), model_dir)
    # Same logits as HF on a probe batch before anything is written (a mismatch is a conversion bug).
    ids, mask = _probe(arch.vocab_size, tok.pad_id, arch.block_size, seed)
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    diff = float((ours[mask.bool()] - theirs[mask.bool()]).abs().max())
    if not diff <= CHECK_TOL:
        raise RuntimeError(f"import check failed: logits differ from HF's by {diff:.3g} (> {CHECK_TOL})")
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "kind": "policy",
        "stage": "import",
        "backbone": gpt_backbone_spec(arch),
        "tokenizer": save_tokenizer(tok, out),
        "parent": str(model_dir),
        "step": 0,
    }
    save_checkpoint(out, model, config)
    summary = {
        "model": str(model_dir),
        "arch": dataclasses.asdict(arch),
        "tokenizer": tok.name,
        "n_params": model.num_params(),
        "check_max_abs_diff": diff,
    }
    write_json(out / "summary.json", summary)
    return summary


def run_import(cfg: ImportHFConfig) -> dict:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    s = import_hf_gpt2(cfg.model, cfg.out, seed=cfg.seed)
    a = s["arch"]
    print(
        f"import-hf: {cfg.model} -> built-in GPT ({a['n_layer']} layers, {a['n_embd']} wide, "
        f"{s['n_params']:,} params, {s['tokenizer']} tokenizer); logits match HF within {s['check_max_abs_diff']:.2g}"
    )
    print(f"outputs: {cfg.out}/ (model.safetensors, config.json, summary.json); use it with --init / --sft")
    return s
