"""The built-in GPT: GPT-2 style (pre-LayerNorm, learned positions, tied embeddings) in one readable file.

Parameter names follow GPT-2 (`transformer.wte`, `transformer.h.0.attn.c_attn`, ...) so export to / import from
Hugging Face GPT-2 is a rename plus a transpose (HF uses Conv1D, we use Linear).

Padding: every forward takes an optional `attention_mask` (B, T) of real tokens. Positions are counted over real
tokens only, so a left-padded prompt gets the same positions (and the same logits) as the unpadded one. That is
what lets generation left-pad prompts while training right-pads sequences, with identical numerics. Forwards
from the first token (training, scoring, the prefill of generation) run LayerNorms, projections and the MLP on the
real tokens only, packed as (N, C), and only attention on the padded (B, T) grid (`TokenGrid`): padding costs no
per-token work. Asked for some positions only (`hidden(positions=...)`: PPO reads the response, a reward model the
last token), the last block computes its outputs there alone; its keys and values still cover every token.

Generation uses a preallocated `KVCache`: one tensor per layer for keys and values, filled in place. Decoding one
token at a time takes a lean path (`_decode_step`): at batch 16 the general forward spends half its time building
masks, views and a masked attention kernel for a single query; the lean step keeps an additive attention bias in
the cache and does two small batched matmuls for attention (~1.4x faster per step, same numbers within 1e-6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rlhf.models.heads import at_positions


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


_GELU_C1 = 2 * math.sqrt(2 / math.pi)
_GELU_C2 = _GELU_C1 * 0.044715
_GELU_C1_T = torch.tensor(_GELU_C1)  # 0-dim float32 on the CPU: addcmul's input (CPU tensors only)


def _gelu_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(x (C1 + C2 x^2)): GELU(x) is x times this."""
    return torch.addcmul(_GELU_C1_T, x, x, value=_GELU_C2).mul_(x).sigmoid_()


class _TanhGELU(torch.autograd.Function):
    """GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as x * sigmoid(x (C1 + C2 x^2)) -
    the same function (0.5 (1 + tanh z) = sigmoid(2z)), ~1e-7 apart in float32.

    Why: on this project's AVX2 CPUs PyTorch's tanh is ~4x slower than its sigmoid, and F.gelu evaluates tanh
    twice (forward and backward). Here the forward is one sigmoid and a few multiply-adds, and it stores the
    derivative for the backward (a single multiply): 6.5 -> 3.9 ms fwd+bwd on (1392, 512).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        s = _gelu_sigmoid(x)
        xdu = torch.addcmul(_GELU_C1_T, x, x, value=3 * _GELU_C2).mul_(x)  # x u'(x), u = x (C1 + C2 x^2)
        ctx.save_for_backward(xdu.addcmul_(xdu, s, value=-1).add_(1).mul_(s))  # d/dx = s (1 + x u' (1 - s))
        return s.mul_(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (derivative,) = ctx.saved_tensors
        return grad * derivative


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """F.gelu(x, approximate="tanh"), faster on CPU in float32 (see _TanhGELU).

    Without autograd, plain ops (an autograd.Function call alone costs ~25 us, and a decode step at batch 16 has
    four): 2.4x faster than F.gelu on (1024, 512), 1.5x on (16, 512). Tiny inputs and other dtypes take F.gelu
    (which computes in float32 internally), and so do GPUs: F.gelu is one fused kernel there, and addcmul refuses
    the CPU constant below with CUDA tensors (found by benchmarks/gpu_check.sh on an H200)."""
    if x.dtype != torch.float32 or x.numel() < 4096 or x.device.type != "cpu":
        return F.gelu(x, approximate="tanh")
    if torch.is_grad_enabled() and x.requires_grad:
        return _TanhGELU.apply(x)
    return _gelu_sigmoid(x).mul_(x)


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
        self.attn_bias: torch.Tensor | None = None
        """(B * nh, 1, max_len) additive bias of the lean decode step: 0 at real keys, -inf at padding. Built from
        `key_mask` when decoding starts; None whenever the general path has written slots since."""
        self.lean_weights: list | bool | None = None
        """The lean decode step's parameters, looked up once per cache (attribute look-ups through nn.Module cost
        ~0.25 ms per step); False when the model cannot take the lean step (e.g. LoRA-wrapped layers)."""


class TokenGrid:
    """Where the real tokens of a padded (B, T) batch sit, for forwards from the first token (training, scoring,
    the prefill of generation).

    Per-token layers (LayerNorms, projections, the MLP) run on the real tokens only, packed as (N, C), so padding
    costs them nothing (PPO's rollouts are ~15% padding, SFT batches of mixed lengths often more). Attention runs
    on the (B, T) grid: `unpack` scatters packed rows onto it (zeros at padding), `pack` reads the real ones back.
    """

    def __init__(self, real: torch.Tensor | None, B: int, T: int):
        self.B, self.T = B, T
        self.real = real
        """(B, T) bool, True at real tokens; None when every token is real."""
        # (N,) each real token's index in the flattened grid
        self.index = None if real is None else real.reshape(-1).nonzero().squeeze(1)
        # Right padding needs no mask: causal attention already hides later pads from real queries.
        self.attn_mask = None if real is None or is_right_padded(real) else GPT._attn_mask(real, None)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...): the real tokens, row by row."""
        flat = t.reshape(self.B * self.T, *t.shape[2:])
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D), zeros at padding."""
        if self.index is not None:  # in place: the out-of-place index_copy would first clone the zeros
            t = t.new_zeros(self.B * self.T, t.size(-1)).index_copy_(0, self.index, t)
        return t.view(self.B, self.T, -1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}"
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_attn's output (B, T, 3C) -> q, k, v, each (B, nh, T, hs)."""
        B, T, C3 = qkv.shape
        return qkv.view(B, T, 3, self.n_head, C3 // (3 * self.n_head)).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x, attn_mask, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.heads(self.c_attn(x))
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

    def on_grid(
        self,
        qkv: torch.Tensor,
        grid: TokenGrid,
        query_pos: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Attention from the first token: qkv (B, T, 3C) on the batch's grid -> (B, Tq, C), where the queries are
        every position (Tq = T) or only `query_pos` (B, K) (Tq = K); keys are always every token. An empty
        `cache` gets the keys and values in slots 0..T-1."""
        q, k, v = self.heads(qkv)
        B, nh, T, hs = k.shape
        if cache is not None:
            cache.k[layer, :, :, :T] = k
            cache.v[layer, :, :, :T] = v
        if query_pos is None:
            mask = grid.attn_mask
        else:
            q = q.gather(2, query_pos[:, None, :, None].expand(-1, nh, -1, hs))  # (B, nh, K, hs)
            keys = torch.arange(T, device=qkv.device)
            mask = keys <= query_pos.unsqueeze(-1)  # (B, K, T): causal from each query's own position
            if grid.real is not None:
                mask = mask & grid.real.unsqueeze(1)
            # A pad query sees at least itself: no all-masked (NaN) row.
            mask = (mask | (keys == query_pos.unsqueeze(-1))).unsqueeze(1)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self._p()
        )
        return y.transpose(1, 2).reshape(B, q.size(2), nh * hs)

    def _p(self) -> float:
        return self.dropout if self.training else 0.0


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(gelu_tanh(self.c_fc(x))))


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

    def on_tokens(
        self,
        x: torch.Tensor,
        grid: TokenGrid,
        query_pos: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """The block on packed real tokens x (N, C) -> (N, C); with `query_pos` (B, K), only the outputs at those
        positions (B * K, C): the rest of this block's work is skipped (its keys and values still cover all).
        With an empty `cache`, this layer's keys and values are written to its first T slots."""
        qkv = grid.unpack(self.attn.c_attn(self.ln_1(x)))
        y = self.attn.on_grid(qkv, grid, query_pos, cache, layer)  # (B, Tq, C)
        if query_pos is None:
            y = grid.pack(y)  # (N, C)
        else:  # the residual stream, too, only at the queried positions
            C = x.size(-1)
            x = at_positions(grid.unpack(x), query_pos).reshape(-1, C)
            y = y.reshape(-1, C)
        x = x + self.drop(self.attn.c_proj(y))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 style decoder. `hidden()` gives the final hidden states; `forward()` the next-token logits."""

    reads_packed_pairs = True  # `hidden(segments=...)`: see heads.ScalarModel.score_pairs
    reads_positions = True  # `hidden(positions=...)` computes only those: see heads.hidden_at

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False  # a run-time switch, not architecture: not in GPTConfig
        # One-token cached steps take `_decode_step` (False: the general path, for tests).
        self.lean_decode = True
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
        segments: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, C) for token ids `idx` (B, T).

        `attention_mask` (B, T): True/1 at real tokens. With a `cache`, `idx` continues the cached sequence and
        the mask covers only the new tokens. `segments` (B, T) instead reads packed rows (`pack_pairs`): a shared
        prefix (0) continued by branches (1, 2, ...), padding -1; each token sees the prefix and its own branch.
        `positions` (B, K) (no cache): only those positions' states, (B, K, C); the last block then computes
        just those (PPO reads the response positions, a reward model the last token) - with `segments`, they are
        read after the full forward. Padding positions' states are zeros or unspecified: never read.
        """
        B, T = idx.shape
        inference = not (self.training or torch.is_grad_enabled())
        if segments is not None:
            assert cache is None and attention_mask is None, "segments replace the mask and take no cache"
            attn_mask, pos = self._segment_mask(segments)
            x = self._blocks(idx, pos, attn_mask)
            return x if positions is None else x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.size(-1)))
        if cache is None or cache.length == 0:  # training, scoring, or the prefill of an empty cache
            return self._token_forward(idx, attention_mask, positions, cache)
        assert positions is None, "positions are for forwards without a cache"
        if T == 1 and inference and self._lean_weights(cache) is not None:
            return self._decode_step(idx[:, 0], attention_mask, cache)
        real = torch.ones_like(idx, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        # Positions count real tokens only, so left padding does not shift them.
        pos = (cache.next_pos.unsqueeze(1) + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        assert int(pos.max()) < self.cfg.block_size, f"sequence exceeds block_size={self.cfg.block_size}"
        x = self._blocks(idx, pos, self._attn_mask(real, cache), cache)
        cache.length += T
        cache.next_pos = pos[:, -1] + real[:, -1].long()
        return x

    def _token_forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """`hidden()` from the first token: per-token layers on the real tokens only (`TokenGrid`), the last block
        only at `positions` when given. With an empty `cache` (the prefill of generation) its slots 0..T-1 are
        filled: padding's keys and values are zeros, never attended to."""
        B, T = idx.shape
        assert T <= self.cfg.block_size, f"sequence of {T} tokens exceeds block_size={self.cfg.block_size}"
        real = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        grid = TokenGrid(real, B, T)
        if real is None:
            pos = torch.arange(T, device=idx.device).expand(B, T)
        else:  # positions count real tokens only, so left padding does not shift them
            pos = (real.long().cumsum(1) - 1).clamp(min=0)
        x = self.transformer.drop(self.transformer.wte(grid.pack(idx)) + self.transformer.wpe(grid.pack(pos)))
        blocks = self.transformer.h
        for i, block in enumerate(blocks):
            query_pos = positions if i == len(blocks) - 1 else None
            x = self._run_block(block.on_tokens, x, grid, query_pos, cache, i)
        if cache is not None:
            cache.key_mask[:, :T] = True if real is None else real
            cache.attn_bias = None  # the lean decode step rebuilds it from key_mask
            cache.length = T
            cache.next_pos = pos[:, -1] + (1 if real is None else real[:, -1].long())
        x = self.transformer.ln_f(x)
        return grid.unpack(x) if positions is None else x.view(B, positions.size(1), -1)

    def _blocks(self, idx, pos, attn_mask, cache: KVCache | None = None) -> torch.Tensor:
        """Embeddings at positions `pos`, the blocks under `attn_mask`, the final LayerNorm."""
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = self._run_block(block, x, attn_mask, cache, i)
        return self.transformer.ln_f(x)

    def _run_block(self, fn, x: torch.Tensor, *args) -> torch.Tensor:
        """fn(x, *args) for one block; under gradient checkpointing only its input is kept, and its activations
        are recomputed in backward."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, x, *args, use_reentrant=False)
        return fn(x, *args)

    def _segment_mask(self, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask (B, 1, T, T), positions (B, T)) of packed rows: a query sees earlier real keys of the shared
        prefix and of its own branch (and itself). Its position is the number of keys it sees, minus one - the
        position it has in its own unpacked sequence."""
        T = segments.size(1)
        q, k = segments.unsqueeze(2), segments.unsqueeze(1)  # (B, T, 1), (B, 1, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
        sees = causal & (k >= 0) & ((k == 0) | (k == q))  # (B, T, T)
        pos = (sees.sum(-1) - 1).clamp(min=0)  # pad queries see nothing real: position 0, never read
        assert int(pos.max()) < self.cfg.block_size, f"sequence exceeds block_size={self.cfg.block_size}"
        sees = sees | torch.eye(T, dtype=torch.bool, device=segments.device)  # no all-masked (NaN) pad row
        return sees.unsqueeze(1), pos

    def _lean_weights(self, cache: KVCache) -> list | None:
        """Per-layer parameter tuples for `_decode_step`, or None where it does not apply.

        Only plain nn.Linear / nn.LayerNorm layers qualify: a wrapped layer (a LoRA adapter) must run its own
        forward, so such a model keeps the general path. Looked up once per cache: sampling never updates weights.
        """
        if cache.lean_weights is None:
            layers = [
                (b.ln_1, b.attn.c_attn, b.attn.c_proj, b.ln_2, b.mlp.c_fc, b.mlp.c_proj)
                for b in self.transformer.h
            ]
            plain = self.lean_decode and all(
                type(m) in (nn.Linear, nn.LayerNorm) for ms in layers for m in ms
            )
            cache.lean_weights = plain and [tuple(t for m in ms for t in (m.weight, m.bias)) for ms in layers]
        return cache.lean_weights or None

    def _decode_step(self, tok: torch.Tensor, live: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
        """`hidden()` for one new token per row (B,) continuing `cache`: (B, 1, C). No grad, no dropout.

        The same arithmetic as the general path with fewer ops: one (B, C) row per sequence, attention as batched
        (B * nh) matmuls against the cache with an additive bias. One difference, invisible to callers: a row
        whose new token is padding (`live` False) does not attend to that token itself (the general path lets
        it, to keep an all-padding prompt defined); its output is never read, and every row here already has
        real prompt keys, so its softmax stays finite.
        """
        B = tok.size(0)
        nh, C, S, s = self.cfg.n_head, self.cfg.n_embd, cache.max_len, cache.length
        hs = C // nh
        assert s < S, f"KV cache full ({S} slots)"
        real = torch.ones_like(tok, dtype=torch.bool) if live is None else live.reshape(B).bool()
        pos = cache.next_pos
        assert int(pos.max()) < self.cfg.block_size, f"sequence exceeds block_size={self.cfg.block_size}"
        if cache.attn_bias is None:
            bias = torch.zeros(B, nh, 1, S, dtype=cache.k.dtype, device=tok.device)
            cache.attn_bias = bias.masked_fill_(~cache.key_mask[:, None, None, :], float("-inf")).view(
                B * nh, 1, S
            )
        bias = cache.attn_bias
        cache.key_mask[:, s] = real
        bias.view(B, nh, S)[:, :, s] = torch.where(real, 0.0, float("-inf")).unsqueeze(1)
        bias = bias[:, :, : s + 1]
        x = self.transformer.wte.weight[tok] + self.transformer.wpe.weight[pos]  # (B, C)
        scale, ln = 1.0 / math.sqrt(hs), F.layer_norm
        for i, (l1w, l1b, aw, ab, pw, pb, l2w, l2b, fw, fb, f2w, f2b) in enumerate(self._lean_weights(cache)):
            q, k, v = F.linear(ln(x, (C,), l1w, l1b), aw, ab).view(B, 3, nh, hs).unbind(1)  # each (B, nh, hs)
            cache.k[i, :, :, s] = k  # into slot s
            cache.v[i, :, :, s] = v
            keys = cache.k[i].view(B * nh, S, hs)[:, : s + 1]
            values = cache.v[i].view(B * nh, S, hs)[:, : s + 1]
            att = torch.baddbmm(bias, q.reshape(B * nh, 1, hs), keys.transpose(1, 2), alpha=scale).softmax(-1)
            x = x + F.linear(torch.bmm(att, values).view(B, C), pw, pb)
            x = x + F.linear(gelu_tanh(F.linear(ln(x, (C,), l2w, l2b), fw, fb)), f2w, f2b)
        cache.length = s + 1
        cache.next_pos = pos + real.long()
        f = self.transformer.ln_f
        return ln(x, (C,), f.weight, f.bias).unsqueeze(1)

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
            cache.attn_bias = None  # the lean decode step rebuilds it from key_mask
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
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, vocab); (B, K, vocab) at `positions` only; packed rows with `segments` (see
        `hidden`)."""
        return self.lm_head(self.hidden(idx, attention_mask, cache, segments=segments, positions=positions))

    def gradient_checkpointing_enable(self) -> None:
        """Recompute block activations in backward instead of storing them (training only; same name as HF's)."""
        self.grad_checkpointing = True

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.lm_head.weight
        return KVCache(self.cfg, batch_size, max_len, p.device, p.dtype)

    def num_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())
