"""Token log-probabilities and entropies from language-model logits.

Logits are (batch, seq_len, vocab). The vocabulary is large (tens of thousands), so the full
log-softmax is the biggest tensor in PPO: these helpers upcast and normalise one batch row at a time,
so the float32 working copy is (seq_len, vocab) rather than (batch, seq_len, vocab). Results are float32
even for bf16/fp16 logits, whose log-softmax is too coarse for PPO ratios.
"""

import torch


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def logprobs_from_logits(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at the given token ids.

    Use the sampling temperature here, so the log-probs are those of the distribution the tokens were
    actually drawn from.

    Args:
        logits: (batch, seq_len, vocab), any float dtype.
        ids: (batch, seq_len) int64 token ids.
        temperature: > 0.

    Returns:
        (batch, seq_len) float32.
    """
    _check_temperature(temperature)
    rows = []
    for row_logits, row_ids in zip(logits, ids):
        z = row_logits.float() / temperature
        # log p(id) = z[id] - logsumexp(z): gathers first, so no normalised (seq_len, vocab) copy is kept.
        picked = z.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(z, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy -sum_v p_v log p_v of softmax(logits / temperature) at every position.

    Args:
        logits: (batch, seq_len, vocab), any float dtype.
        temperature: > 0.

    Returns:
        (batch, seq_len) float32, in nats (log(vocab) for uniform logits).
    """
    _check_temperature(temperature)
    rows = []
    for row_logits in logits:
        logp = torch.log_softmax(row_logits.float() / temperature, dim=-1)
        rows.append(-(logp.exp() * logp).sum(-1))
    return torch.stack(rows)
