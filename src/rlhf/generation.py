"""Batched sampling that knows only token ids: prompt ids in -> response ids, log-probs and a mask out.

Prompts are left-padded so every row's next token lands in the same column. The model needs
`forward(ids, attention_mask, cache) -> logits` and `new_cache(batch, max_len)` (the built-in GPT has both);
with `hidden` and `lm_head` as well, only the last position's logits are computed.
Text lives at the edges (the CLI and the task), never here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Rollout:
    response_ids: torch.Tensor
    """(B, N) sampled ids; `pad_id` after the first EOS."""
    logprobs: torch.Tensor
    """(B, N) log-prob of each sampled id under the sampling distribution (temperature, top-k/p); 0 at padding."""
    response_mask: torch.Tensor
    """(B, N) True at real response tokens, the EOS included."""
    finished: torch.Tensor
    """(B,) True where the row produced an EOS within the budget."""


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf. logits: (B, V). top_k=0 and top_p=1 keep all."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def next_token_logits(
    model, ids: torch.Tensor, mask: torch.Tensor, cache, from_start: bool = False
) -> torch.Tensor:
    """(B, V) logits at each row's last position. Where the model exposes `hidden` and `lm_head` (the built-in
    GPT and Hugging Face policies do), the LM head reads that position only: the prefill's logits over every
    prompt position would otherwise be the largest tensor of sampling (B x P x 150k floats for a Qwen-size
    vocabulary).

    `from_start`: `ids` are whole sequences (the prefill, or a step without the cache). A model that
    `reads_positions` is then asked for the last column only, and the built-in GPT runs its last block's
    attention output and MLP there alone (~3/4 of that block; its keys and values still cover every token)."""
    if hasattr(model, "hidden") and hasattr(model, "lm_head"):
        if from_start and getattr(model, "reads_positions", False):
            last = torch.full((ids.size(0), 1), ids.size(1) - 1, dtype=torch.long, device=ids.device)
            return model.lm_head(model.hidden(ids, mask, cache, positions=last)[:, 0])
        return model.lm_head(model.hidden(ids, mask, cache)[:, -1])
    return model(ids, mask, cache)[:, -1]


def sample_categorical(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of log-probabilities (B, V), drawn by inverting the cumulative distribution.

    One uniform number per row instead of torch.multinomial's V exponential draws: ~12 us vs ~210 us for a
    (16, 259) batch on this project's 2-core CPU, i.e. ~7 ms of every 32-token rollout. The CDF is summed in float64
    so that large vocabularies keep their tail; ids of probability 0 (filtered by top-k/top-p) are never drawn:
    the search finds the first id whose CDF exceeds u < CDF[-1].
    """
    cdf = logp.double().exp().cumsum(-1)  # (B, V)
    u = torch.rand(cdf.size(0), 1, dtype=cdf.dtype, device=cdf.device, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.size(1) - 1)


@torch.inference_mode()
def sample(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Rollout:
    """Sample up to `max_new_tokens` for each left-padded prompt row (B, P).

    temperature=0 means greedy. Rows stop at their first EOS (later positions are padding, masked out); the
    loop ends early once every row has stopped. Without the cache the whole sequence is re-read every step
    (slow; kept as the reference the cache is tested against).
    """
    assert prompt_ids.shape == prompt_mask.shape, "prompt_ids and prompt_mask must have the same shape"
    B, P = prompt_ids.shape
    device = prompt_ids.device
    ids = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros(B, max_new_tokens, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    mask = prompt_mask.bool()
    cache = model.new_cache(B, P + max_new_tokens) if use_cache else None
    logits = next_token_logits(model, prompt_ids, mask, cache, from_start=True)  # (B, V)
    seq, seq_mask = prompt_ids, mask
    for t in range(max_new_tokens):
        logits = logits.float()
        if temperature > 0:
            if temperature != 1.0:
                logits = logits / temperature
            logp_all = F.log_softmax(filter_logits(logits, top_k, top_p), dim=-1)
            tok = sample_categorical(logp_all, generator)
        else:
            logp_all = F.log_softmax(logits, dim=-1)
            tok = logits.argmax(-1)
        tok = tok.masked_fill(done, pad_id)
        ids[:, t] = tok
        logps[:, t] = logp_all.gather(1, tok.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0)
        live = ~done
        done = done | (tok == eos_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if cache is not None:
            logits = next_token_logits(model, tok.unsqueeze(1), live.unsqueeze(1), cache)
        else:
            seq = torch.cat([seq, tok.unsqueeze(1)], 1)
            seq_mask = torch.cat([seq_mask, live.unsqueeze(1)], 1)
            logits = next_token_logits(model, seq, seq_mask, None, from_start=True)
    response_mask = response_mask_from_ids(ids, eos_id)
    return Rollout(ids, logps * response_mask, response_mask, (ids == eos_id).any(1))


def response_mask_from_ids(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, N) True up to and including the first EOS of each row (all True where a row has no EOS)."""
    is_eos = ids == eos_id
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return ~after_eos
