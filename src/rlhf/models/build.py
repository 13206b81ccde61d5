"""Build models and tokenizers from a checkpoint's `config.json`, so each stage reads its parent by path alone.

A checkpoint config names its backbone (`{"type": "gpt", "arch": {...}}` for the built-in GPT, `{"type": "hf",
"config": {...}}` for a Hugging Face trunk, `{"type": "hf_causal", "config": {...}}` for a Hugging Face causal LM)
and its tokenizer (`{"type": "byte"}`), plus `kind` ("policy" or "scalar"), and for scalar models the `pooling`
and the reward normalisation. Everything that rebuilds a model from disk goes through here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from rlhf.checkpoint import load_model_files, save_model
from rlhf.data.tokenizer import ByteTokenizer, Tokenizer
from rlhf.errors import UserError
from rlhf.models.gpt import GPT, GPTConfig
from rlhf.models.heads import ScalarModel


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> dict:
    """The tokenizer spec for config.json; a Hugging Face tokenizer is copied into `directory/tokenizer/`."""
    if tok.name == "hf":
        tok.tok.save_pretrained(str(Path(directory) / "tokenizer"))
        return {"type": "hf", "path": "tokenizer"}
    return {"type": tok.name}


def build_tokenizer(spec: dict, directory: str | Path) -> Tokenizer:
    """The tokenizer of the checkpoint in `directory` (Hugging Face paths are relative to it)."""
    if spec["type"] == "byte":
        return ByteTokenizer()
    if spec["type"] == "hf":
        from rlhf.data.tokenizer import HFTokenizer

        return HFTokenizer(str(Path(directory) / spec["path"]))
    raise UserError(f"unknown tokenizer type {spec['type']!r} in checkpoint config")


def gpt_backbone_spec(cfg: GPTConfig) -> dict:
    return {"type": "gpt", "arch": dataclasses.asdict(cfg)}


def build_backbone(spec: dict) -> nn.Module:
    """An untrained backbone (GPT, HF trunk or HF causal LM) from its spec; weights are loaded by the caller."""
    if spec["type"] == "gpt":
        return GPT(GPTConfig(**spec["arch"]))
    if spec["type"] == "hf":
        from rlhf.models.hf import build_hf_backbone

        return build_hf_backbone(spec)
    if spec["type"] == "hf_causal":
        from rlhf.models.hf import build_hf_causal_lm

        return build_hf_causal_lm(spec)
    raise UserError(f"unknown backbone type {spec['type']!r} in checkpoint config")


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strict load that tolerates only tied weights stored once (safetensors keeps one name per storage)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch: config.json and the weights disagree
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"{source}: weights do not fit the model in config.json ({first})") from None
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)} - {
        n for n, _ in model.named_parameters()
    }
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{source}: weights do not match the model in config.json "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); re-run the stage that wrote it"
        )


def _check_keys(config: dict, directory: str | Path) -> None:
    for key in ("backbone", "tokenizer"):
        if key not in config:
            raise UserError(
                f"{Path(directory) / 'config.json'}: missing '{key}'; re-run the stage that wrote it"
            )


def load_policy(directory: str | Path) -> tuple[nn.Module, Tokenizer, dict]:
    """(causal LM, tokenizer, config) from a policy checkpoint (SFT or PPO output)."""
    state, config = load_model_files(directory)
    _check_keys(config, directory)
    if config.get("kind") != "policy":
        raise UserError(
            f"{directory}: is a {config.get('kind')!r} checkpoint, expected a policy (SFT/PPO output)"
        )
    model = build_backbone(config["backbone"])
    load_state(model, state, directory)
    return model, build_tokenizer(config["tokenizer"], directory), config


def load_scalar(directory: str | Path) -> tuple[ScalarModel, Tokenizer, dict]:
    """(scalar model, tokenizer, config) from a reward or value checkpoint."""
    state, config = load_model_files(directory)
    _check_keys(config, directory)
    if config.get("kind") != "scalar":
        raise UserError(f"{directory}: is a {config.get('kind')!r} checkpoint, expected a reward model")
    model = ScalarModel(build_backbone(config["backbone"]), pooling=config.get("pooling", "last"))
    load_state(model, state, directory)
    return model, build_tokenizer(config["tokenizer"], directory), config


def save_checkpoint(directory: str | Path, model: nn.Module, config: dict) -> None:
    """Model checkpoint (weights + config.json) into `directory`, atomically file by file (weights first)."""
    save_model(directory, model.state_dict(), config)


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0 (RL stages: dropout would make log-probs of the same tokens differ)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = 0.0
    return model
