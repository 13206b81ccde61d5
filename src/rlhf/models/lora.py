"""LoRA through `peft` (optional extra `rlhf[hf]`) on any of our models: the built-in GPT or a Hugging Face one.

Adapters are injected *in place* (`peft.inject_adapter_in_model`), so the model keeps its class and interface
(`forward`, `hidden`, `lm_head`, `new_cache`): stages and generation never ask whether LoRA is on. Only the
targeted layers change: `x.c_attn` becomes a LoRA layer holding `x.c_attn.base_layer` and
`x.c_attn.lora_A/B.default`, so a resume checkpoint of a LoRA run holds base and adapters under those names.

Model checkpoints (what the next stage reads) are saved merged (`merge_lora`): W + (alpha/r) B A in the
original layout, readable without peft. That is also what makes PPO's reference right: PPO re-applies fresh
adapters to the merged SFT weights, and the model with its adapters disabled *is* the SFT policy - no second copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch.nn as nn

from rlhf.errors import UserError

# Default targets per architecture: every attention and MLP matrix (LoRA on all linear layers matches full
# fine-tuning far better than attention-only; Dettmers et al. 2023, QLoRA sec. 4). The built-in GPT uses
# GPT-2's names. BERT's 'output.dense' matches both output projections but not the (unused) pooler.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt": ["c_attn", "c_proj", "c_fc"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bert": ["query", "key", "value", "intermediate.dense", "output.dense"],
}


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("--lora-rank needs peft: pip install -e '.[hf]'") from None
    return peft


def model_type(model: nn.Module) -> str:
    """'gpt' for the built-in GPT, else the Hugging Face `model_type` of the first HF model inside `model`."""
    for m in model.modules():
        config = getattr(m, "config", None)
        if getattr(config, "model_type", None):
            return config.model_type
    return "gpt"


def default_targets(model: nn.Module) -> list[str]:
    """LoRA target module names for `model`'s architecture (peft's own table for ones we do not list)."""
    kind = model_type(model)
    if kind in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[kind]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    if kind in PEFT_TARGETS:
        return list(PEFT_TARGETS[kind])
    raise UserError(f"no default LoRA targets for model type {kind!r}; name the layers with --lora-targets")


def apply_lora(model: nn.Module, rank: int, alpha: float = 0.0, targets: Sequence[str] = ()) -> dict:
    """Inject LoRA adapters into `model` in place and freeze everything else; returns the spec for config.json.

    alpha 0 means 2 * rank (a scale of 2). `targets` are module-name suffixes ('c_attn', 'q_proj', ...); none =
    the architecture's defaults. Parameters outside `model` (a reward/value head next to a trunk) are untouched.
    """
    peft = _peft()
    if rank < 1:
        raise UserError(f"--lora-rank must be >= 1 to use LoRA, got {rank}")
    targets = list(targets) or default_targets(model)
    alpha = alpha if alpha > 0 else 2.0 * rank
    # HF GPT-2 stores its matrices transposed (Conv1D); peft must be told or it warns and guesses.
    conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none", fan_in_fan_out=conv1d
    )
    try:
        peft.inject_adapter_in_model(config, model)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise UserError(f"--lora-targets {' '.join(targets)}: {str(e).splitlines()[0]}") from None
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return {"rank": rank, "alpha": alpha, "targets": targets}


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """Every LoRA layer inside `model` (empty when LoRA is off)."""
    if not any("lora_" in name for name, _ in model.named_parameters()):
        return []  # no adapters: do not make peft a requirement of plain runs
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block `model` computes with its base weights only (every LoRA layer switched off)."""
    layers = lora_layers(model)
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


class AdapterDisabledReference:
    """PPO's frozen reference when the policy trains LoRA adapters: the same module, called with its adapters
    off. Not an nn.Module on purpose: it holds no parameters of its own (freezing it must not freeze the policy).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args, **kwargs):
        with adapters_disabled(self.model):
            return self.model(*args, **kwargs)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W += alpha/r * B A) and put the plain layer back, in place.

    Returns `model` with the original parameter names, as if it had been fine-tuned without LoRA (a no-op for a
    model without adapters). Stages call it before saving a model checkpoint; `rlhf export` may call it on a
    model with adapters.
    """
    layers = set(lora_layers(model))
    if not layers:
        return model
    for name, module in list(model.named_modules()):
        if module not in layers:
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_params(model: nn.Module) -> int:
    """Parameters that receive gradients (all of them without LoRA)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
