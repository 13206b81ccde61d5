"""The policy with an optional value model, behind one call, so the on-policy update never asks which layout is in
use.

'separate': the value model is its own trunk + head (initialised from the reward model: Huang et al. detail 22).
'shared':   one trunk, the LM head and a value head on the same hidden states - one fused forward.
'none':     no value model at all (GRPO, RLOO, REINFORCE++): the forward returns `values=None`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from rlhf.concurrent import run_concurrently
from rlhf.models.heads import ScalarModel, hidden_at, scalar_head

ValueLayout = Literal["separate", "shared", "none"]


class PolicyValue(nn.Module):
    """`policy` (a causal LM) and, per `layout`, a separate `value` ScalarModel or a `value_head` on the trunk."""

    def __init__(self, policy: nn.Module, value: ScalarModel | None, layout: ValueLayout | None = None):
        super().__init__()
        self.layout: ValueLayout = layout or ("separate" if value is not None else "shared")
        assert (value is not None) == (self.layout == "separate"), "a value model goes with layout 'separate'"
        self.policy = policy
        self.value = value
        if self.layout == "shared":
            self.value_head = scalar_head(policy.hidden_size)

    @property
    def has_value(self) -> bool:
        return self.layout != "none"

    @property
    def runs_concurrently(self) -> bool:
        """Whether separate policy and value passes run side by side (rlhf.concurrent). Not when sharded by FSDP:
        its gathers and reductions are collectives that every process must issue in the same order, one thread."""
        from torch.distributed.fsdp import FSDPModule

        return self.layout == "separate" and not isinstance(self, FSDPModule)

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits (B, T, V), values (B, T) or None), or (B, K, V) and (B, K) at `positions` (B, K) only: the update
        reads just the positions predicting the response (the built-in GPT then skips most of its last block, and
        the LM head never sees the prompt). `segments`: packed rows (a prompt once, its completions as branches)."""
        packed = {} if segments is None else {"segments": segments}
        if self.layout == "separate":
            return self.policy(ids, mask, positions=positions, **packed), self.value(
                ids, mask, positions, segments
            )
        if self.layout == "none":
            return self.policy(ids, mask, positions=positions, **packed), None
        h = hidden_at(self.policy, ids, mask, positions, segments)
        return self.policy.lm_head(h), self.value_head(h).squeeze(-1)

    def forward_concurrently(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor,
        autocast,
        segments: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` under `autocast()` (a context factory); separate policy and value models run side by side
        (rlhf.concurrent: they share no parameter, so each takes one of the CPU cores). Autocast is thread-local:
        each worker enters it."""

        packed = {} if segments is None else {"segments": segments}

        def policy() -> torch.Tensor:
            with autocast():
                return self.policy(ids, mask, positions=positions, **packed)

        def value() -> torch.Tensor:
            with autocast():
                return self.value(ids, mask, positions, segments)

        if not self.runs_concurrently:
            with autocast():
                return self(ids, mask, positions, segments)
        logits, values = run_concurrently(policy, value)
        return logits, values
