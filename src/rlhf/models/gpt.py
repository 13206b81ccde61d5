"""The built-in GPT: GPT-2 style (pre-LayerNorm, learned positions, tied embeddings) in one readable file.

Parameter names follow GPT-2 (`transformer.wte`, `transformer.h.0.attn.c_attn`, ...) so export to / import from
Hugging Face GPT-2 is a rename plus a transpose (HF uses Conv1D, we use Linear).

Padding: every forward takes an optional `attention_mask` (B, T) of real tokens. Positions are counted over real
tokens only, so a left-padded prompt gets the same positions (and the same logits) as the unpadded one. That is
what lets generation left-pad prompts while training right-pads sequences, with identical numerics.

Generation uses a preallocated `KVCache`: one tensor per layer for keys and values, filled in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class GPTConfig:
    """Architecture of the built-in GPT."""

    vocab_size: int = 259
    """Vocabulary size (259 for the byte tokenizer: 256 bytes + pad/bos/eos)."""
    block_size: int = 256
    """Longest sequence the model can read (prompt + response tokens)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    n_embd: int = 128
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout during SFT (RL stages always turn dropout off)."""


def is_right_padded(mask: torch.Tensor) -> bool:
    """True when every row is real tokens followed only by padding (no pad before a real token)."""
    m = mask.bool()
    return bool(m[:, 0].all()) and not bool((m[:, 1:] & ~m[:, :-1]).any())


class KVCache:
    """Preallocated keys/values for all layers: (n_layer, B, nh, max_len, hs), written in place while decoding."""

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int, device, dtype):
        hs = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, hs)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.key_mask = torch.zeros(
            batch_size, max_len, dtype=torch.bool, device=device
        )  # real (non-pad) keys
        self.next_pos = torch.zeros(
            batch_size, dtype=torch.long, device=device
        )  # position id of the next token
        self.length = 0  # filled slots
        self.max_len = max_len


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}"
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x, attn_mask, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            s = cache.length
            cache.k[layer, :, :, s : s + T] = k
            cache.v[layer, :, :, s : s + T] = v
            k = cache.k[layer, :, :, : s + T]  # (B, nh, S, hs)
            v = cache.v[layer, :, :, : s + T]
        if attn_mask is None:  # no padding anywhere: the fast causal kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self._p())
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self._p())
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)

    def _p(self) -> float:
        return self.dropout if self.training else 0.0


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, attn_mask, cache=None, layer=0):
        x = x + self.drop(self.attn(self.ln_1(x), attn_mask, cache, layer))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 style decoder. `hidden()` gives the final hidden states; `forward()` the next-token logits."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False  # a run-time switch, not architecture: not in GPTConfig
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so depth does not blow up the stream.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def hidden_size(self) -> int:
        return self.cfg.n_embd

    def hidden(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, C) for token ids `idx` (B, T).

        `attention_mask` (B, T): True/1 at real tokens. With a `cache`, `idx` continues the cached sequence and
        the mask covers only the new tokens.
        """
        B, T = idx.shape
        if cache is None and attention_mask is not None and is_right_padded(attention_mask):
            # Right padding needs no mask: causal attention already hides later pads from real tokens, and
            # positions start at 0 in every row. The fast causal kernel; pad positions' outputs are never read.
            attention_mask = None
        if attention_mask is None and cache is None:
            assert T <= self.cfg.block_size, (
                f"sequence of {T} tokens exceeds block_size={self.cfg.block_size}"
            )
            pos = torch.arange(T, device=idx.device).unsqueeze(0)  # (1, T)
            attn_mask = None
        else:
            real = torch.ones_like(idx, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            start = (
                cache.next_pos if cache is not None else torch.zeros(B, dtype=torch.long, device=idx.device)
            )
            # Positions count real tokens only, so left padding does not shift them.
            pos = (start.unsqueeze(1) + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
            assert int(pos.max()) < self.cfg.block_size, f"sequence exceeds block_size={self.cfg.block_size}"
            attn_mask = self._attn_mask(real, cache)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                # Keep only each block's input; its activations are recomputed in backward.
                x = checkpoint(block, x, attn_mask, cache, i, use_reentrant=False)
            else:
                x = block(x, attn_mask, cache, i)
        if cache is not None:
            cache.length += T
            cache.next_pos = pos[:, -1] + real[:, -1].long()
        return self.transformer.ln_f(x)

    @staticmethod
    def _attn_mask(real: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Boolean (B, 1, T, S) mask: causal, real keys only, and every query may see itself.

        Letting a pad query attend to itself keeps its softmax defined (no all-masked row -> no NaN); pad
        positions' outputs are never used.
        """
        B, T = real.shape
        past = 0 if cache is None else cache.length
        if cache is not None:
            cache.key_mask[:, past : past + T] = real
            keys = cache.key_mask[:, : past + T]  # (B, S)
        else:
            keys = real
        S = past + T
        q_pos = torch.arange(past, S, device=real.device).unsqueeze(1)  # (T, 1)
        k_pos = torch.arange(S, device=real.device).unsqueeze(0)  # (1, S)
        causal = k_pos <= q_pos  # (T, S)
        mask = causal.unsqueeze(0) & keys.unsqueeze(1)  # (B, T, S)
        mask = mask | (k_pos == q_pos).unsqueeze(0)
        return mask.unsqueeze(1)  # (B, 1, T, S)

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, vocab)."""
        return self.lm_head(self.hidden(idx, attention_mask, cache))

    def gradient_checkpointing_enable(self) -> None:
        """Recompute block activations in backward instead of storing them (training only; same name as HF's)."""
        self.grad_checkpointing = True

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.lm_head.weight
        return KVCache(self.cfg, batch_size, max_len, p.device, p.dtype)

    def num_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())
