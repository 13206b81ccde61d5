"""Build models and tokenizers from a checkpoint's `config.json`, so each stage reads its parent by path alone.

A checkpoint config names its backbone (`{"type": "gpt", "arch": {...}}` for the built-in GPT, `{"type": "hf",
"config": {...}}` for a Hugging Face trunk, `{"type": "hf_causal", "config": {...}}` for a Hugging Face causal LM)
and its tokenizer (`{"type": "byte"}`), plus `kind` ("policy" or "scalar"), and for scalar models the `pooling`
and the reward normalisation. Everything that rebuilds a model from disk goes through here.

A reward-model ensemble (`rlhf reward --ensemble K`) is one run directory whose config.json carries
`"ensemble": {"size": K, "shared_trunk": ..., "members": [...], "reward_norm": [K statistics]}`: independent members
are normal reward checkpoints in `member-k/` sub-directories; a shared trunk is one checkpoint with a K-output head.
`load_reward_ensemble` reads either (and a plain reward model as K = 1); `load_scalar` reads member 0 of an ensemble.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from rlhf.checkpoint import CONFIG, load_model_files, read_json, save_model
from rlhf.data.tokenizer import ByteTokenizer, Tokenizer
from rlhf.errors import UserError
from rlhf.models.gpt import GPT, GPTConfig
from rlhf.models.heads import RewardEnsemble, ScalarModel


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


def ensemble_spec(directory: str | Path) -> dict | None:
    """The `ensemble` entry of a checkpoint's config.json (None for a single model or no readable config)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        return None  # load_model_files says what is missing
    config = read_json(path)
    spec = config.get("ensemble") if isinstance(config, dict) else None
    if spec is not None and not (
        isinstance(spec, dict) and isinstance(spec.get("size"), int) and spec["size"] >= 1
    ):
        raise UserError(f"{path}: malformed 'ensemble' entry; re-run the stage that wrote it")
    return spec


def _load_heads(directory: str | Path) -> tuple[ScalarModel, Tokenizer, dict]:
    """(scalar model with every head the checkpoint stores, tokenizer, config) of one checkpoint file set."""
    state, config = load_model_files(directory)
    _check_keys(config, directory)
    if config.get("kind") != "scalar":
        raise UserError(f"{directory}: is a {config.get('kind')!r} checkpoint, expected a reward model")
    spec = config.get("ensemble") or {}
    n_heads = spec["size"] if spec.get("shared_trunk") else 1
    model = ScalarModel(build_backbone(config["backbone"]), config.get("pooling", "last"), n_heads)
    load_state(model, state, directory)
    return model, build_tokenizer(config["tokenizer"], directory), config


def load_scalar(directory: str | Path) -> tuple[ScalarModel, Tokenizer, dict]:
    """(scalar model, tokenizer, config) from a reward or value checkpoint; of an ensemble, member 0 (where one
    model is read: a value model's start, `rlhf export`)."""
    spec = ensemble_spec(directory)
    if spec is not None and not spec.get("shared_trunk"):
        return load_scalar(Path(directory) / spec["members"][0])
    model, tok, config = _load_heads(directory)
    if model.n_heads > 1:  # a shared trunk: head 0 on it
        one = ScalarModel(model.trunk, model.pooling).to(model.head.weight.device)
        with torch.no_grad():
            one.head.weight.copy_(model.head.weight[:1])
            one.head.bias.copy_(model.head.bias[:1])
        model = one
    return model, tok, config


def load_reward_ensemble(directory: str | Path) -> tuple[RewardEnsemble, Tokenizer, dict, list[dict | None]]:
    """(ensemble scoring (K, B), tokenizer, config, each member's reward normalisation statistics) from a reward
    checkpoint: an ensemble run directory, or a plain reward model (K = 1)."""
    spec = ensemble_spec(directory)
    if spec is None:
        model, tok, config = _load_heads(directory)
        return RewardEnsemble([model]), tok, config, [config.get("reward_norm")]
    norms = list(spec.get("reward_norm") or [None] * spec["size"])
    if spec.get("shared_trunk"):
        model, tok, config = _load_heads(directory)
        return RewardEnsemble([model]), tok, config, norms
    config = read_json(Path(directory) / CONFIG)
    members = [_load_heads(Path(directory) / m) for m in spec["members"]]
    if len(members) != spec["size"] or len(norms) != spec["size"]:
        raise UserError(
            f"{Path(directory) / CONFIG}: 'ensemble' lists {len(members)} members for size {spec['size']}"
        )
    return RewardEnsemble([m for m, _, _ in members]), members[0][1], config, norms


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
