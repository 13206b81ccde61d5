"""A scalar head on any trunk: the reward model and the value model.

A trunk is any module with `hidden(ids, attention_mask) -> (B, T, C)` and `hidden_size`: the built-in GPT or
the Hugging Face adapter. Stages never ask which one it is. A causal trunk that can read packed pairs (shared
prefix stored once, `data.collate.pack_pairs`) says so with `reads_packed_pairs = True`; `score_pairs` uses it.

A reward-model ensemble (`rlhf reward --ensemble K`) is K independent ScalarModels, or one ScalarModel with K heads
on a shared trunk; `RewardEnsemble` reads either (and a plain reward model, K = 1) as scores (K, B).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from rlhf.data.collate import unpack_pairs


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last real token of each row, whatever the padding side.

    Flip the mask and find the first real token from the right: correct for left padding, right padding, and
    no padding - never a pad position (the bug behind near-chance reward models, trl#937).
    """
    T = attention_mask.size(1)
    return T - 1 - attention_mask.long().flip(1).argmax(1)


def at_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, T) or (B, T, C) read at `positions` (B, K) of each row -> (B, K) or (B, K, C)."""
    if x.dim() == 3:
        positions = positions.unsqueeze(-1).expand(-1, -1, x.size(-1))
    return x.gather(1, positions)


def hidden_at(
    trunk: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    positions: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
):
    """`trunk.hidden(ids, mask)`: (B, T, C), or (B, K, C) at `positions` (B, K) only. A trunk that says
    `reads_positions` computes just those (the built-in GPT skips most of its last block); any other is read after
    its full forward. `segments`: packed rows (shared prefix + branches, `reads_packed_pairs` trunks only)."""
    if segments is not None:
        return trunk.hidden(ids, segments=segments, positions=positions)
    if positions is None:
        return trunk.hidden(ids, mask)
    if getattr(trunk, "reads_positions", False):
        return trunk.hidden(ids, mask, positions=positions)
    return at_positions(trunk.hidden(ids, mask), positions)


def scalar_head(d: int, n: int = 1) -> nn.Linear:
    """Linear d -> n (n heads: a shared-trunk ensemble) initialised as in Huang et al. 2024 detail 11:
    weight ~ N(0, 1/sqrt(d+1)), bias 0."""
    head = nn.Linear(d, n)
    nn.init.normal_(head.weight, std=1.0 / math.sqrt(d + 1))
    nn.init.zeros_(head.bias)
    return head


class ScalarModel(nn.Module):
    """Trunk + linear head giving one scalar per token; `score()` pools them into one scalar per sequence.

    With `n_heads` K > 1 (a shared-trunk ensemble) every output gains a leading member dimension: per-token
    scalars (K, B, T), scores (K, B)."""

    def __init__(self, trunk: nn.Module, pooling: str = "last", n_heads: int = 1):
        super().__init__()
        assert pooling in ("last", "mean"), f"pooling must be 'last' or 'mean', got {pooling!r}"
        assert n_heads >= 1, f"n_heads must be >= 1, got {n_heads}"
        self.trunk = trunk
        self.pooling = pooling
        self.n_heads = n_heads
        self.head = scalar_head(trunk.hidden_size, n_heads)

    def _heads(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T) with one head, (K, B, T) with K."""
        out = self.head(hidden)  # (B, T, K)
        return out.squeeze(-1) if self.n_heads == 1 else out.movedim(-1, 0)

    def gradient_checkpointing_enable(self) -> None:
        self.trunk.gradient_checkpointing_enable()

    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token scalars (B, T), or (B, K) at `positions` (B, K) only (the value model reads the response's);
        packed rows with `segments`. K heads: (K, B, T) or (K, B, K')."""
        return self._heads(hidden_at(self.trunk, ids, attention_mask, positions, segments))

    def score(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One scalar per sequence (B,) ((K, B) with K heads): at the last real token (computed there only), or
        the mean over real tokens."""
        if self.pooling == "last":
            return self(ids, attention_mask, last_token_index(attention_mask).unsqueeze(1))[..., 0]
        return self.pool(self(ids, attention_mask), attention_mask)

    def pool(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token scalars (B, T) ((K, B, T)) -> one per sequence (B,) ((K, B)), over the tokens where `mask` is
        True."""
        if self.pooling == "last":
            last = last_token_index(mask).unsqueeze(1)  # (B, 1)
            return values.gather(-1, last.expand(*values.shape[:-1], 1))[..., 0]
        m = mask.to(values.dtype)
        return (values * m).sum(-1) / m.sum(-1).clamp(min=1)

    @property
    def reads_packed_pairs(self) -> bool:
        """Whether the trunk scores a packed pair in one row (causal trunks that say so, e.g. the built-in GPT)."""
        return getattr(self.trunk, "reads_packed_pairs", False)

    def score_pairs(
        self, ids: torch.Tensor, segments: torch.Tensor, pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen scores (B,), rejected scores (B,)) of packed pairs (`pack_pairs`'s `ids, segments`).

        A trunk that reads packed rows scores both sequences of a pair in one row; any other (a bidirectional
        encoder, a Hugging Face LM) gets the two rows back from `unpack_pairs`, chosen and rejected in one batch.
        """
        if self.reads_packed_pairs:
            values = self._heads(self.trunk.hidden(ids, segments=segments))  # (B, T) or (K, B, T)
            shared = segments == 0
            return self.pool(values, shared | (segments == 1)), self.pool(values, shared | (segments == 2))
        rows, mask = unpack_pairs(ids, segments, pad_id)
        s = self.score(rows, mask)
        return s[..., : ids.size(0)], s[..., ids.size(0) :]


class RewardEnsemble(nn.Module):
    """K reward models read as one: every score gains a leading member dimension K.

    `members`: independent ScalarModels (one head each), or one ScalarModel with K heads on a shared trunk; a plain
    reward model is the ensemble of one. All members share a tokenizer and pooling (one `rlhf reward` run)."""

    def __init__(self, members: list[ScalarModel]):
        super().__init__()
        assert members, "an ensemble needs at least one member"
        pooling = {m.pooling for m in members}
        assert len(pooling) == 1, f"ensemble members pool differently: {sorted(pooling)}"
        self.members = nn.ModuleList(members)
        self.pooling = pooling.pop()

    @property
    def size(self) -> int:
        """K, the number of members (heads counted one by one)."""
        return sum(m.n_heads for m in self.members)

    @property
    def reads_packed_pairs(self) -> bool:
        return all(m.reads_packed_pairs for m in self.members)

    @staticmethod
    def _rows(x: torch.Tensor, m: ScalarModel) -> torch.Tensor:
        return x.unsqueeze(0) if m.n_heads == 1 else x

    def forward(self, ids, attention_mask, positions=None, segments=None) -> torch.Tensor:
        """(K, B, T) per-token scalars, or (K, B, P) at `positions` (see ScalarModel.forward)."""
        return torch.cat([self._rows(m(ids, attention_mask, positions, segments), m) for m in self.members])

    def score(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(K, B): each member's score of each sequence."""
        return torch.cat([self._rows(m.score(ids, attention_mask), m) for m in self.members])

    def score_pairs(
        self, ids: torch.Tensor, segments: torch.Tensor, pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen (K, B), rejected (K, B)) of packed pairs."""
        out = [m.score_pairs(ids, segments, pad_id) for m in self.members]
        return (
            torch.cat([self._rows(c, m) for (c, _), m in zip(out, self.members)]),
            torch.cat([self._rows(r, m) for (_, r), m in zip(out, self.members)]),
        )
