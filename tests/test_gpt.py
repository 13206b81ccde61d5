"""The built-in GPT, sampling and the scalar head: the numerics every stage depends on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rlhf.data.collate import pack_pairs, pad
from rlhf.generation import (
    filter_logits,
    next_token_logits,
    response_mask_from_ids,
    sample,
    sample_categorical,
)
from rlhf.models.gpt import GPT, GPTConfig
from rlhf.models.heads import ScalarModel, last_token_index

PAD, EOS, V = 256, 258, 259


def tiny_gpt(seed: int = 0, eos_bias: float = 0.0, n_layer: int = 2) -> GPT:
    """A small random GPT; `eos_bias` > 0 makes EOS likely (so rows finish at different steps)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=64, n_layer=n_layer, n_head=2, n_embd=32)).eval()
    if eos_bias:
        with torch.no_grad():
            # logit_eos = h . wte[eos]; put a shared direction in ln_f's bias and in wte[eos] (tied lm_head).
            v = torch.randn(32)
            v = v / v.norm()
            model.transformer.ln_f.bias.copy_(v * math.sqrt(eos_bias))
            model.transformer.wte.weight[EOS] = v * math.sqrt(eos_bias)
    return model


def left_padded_prompts():
    prompts = [[257, 81, 58, 32, 50], [257, 7], [257, 1, 2, 3, 4, 5, 6, 7, 8], [257, 40, 41]]
    return prompts, *pad(prompts, PAD, side="left")


# ------------------------------------------------------------------------------------------------ KV cache
@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 0, 1.0), (0.7, 20, 0.9), (0.0, 0, 1.0)],
    ids=["t1", "t0.7-k-p", "greedy"],
)
def test_kv_cache_sampling_matches_uncached_reference(temperature, top_k, top_p):
    model = tiny_gpt(eos_bias=1.0)
    _, ids, mask = left_padded_prompts()
    runs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(123)
        runs.append(
            sample(model, ids, mask, 20, EOS, PAD, temperature, top_k, top_p, gen, use_cache=use_cache)
        )
    cached, reference = runs
    assert torch.equal(cached.response_ids, reference.response_ids)
    assert torch.equal(cached.response_mask, reference.response_mask)
    assert torch.equal(cached.finished, reference.finished)
    torch.testing.assert_close(cached.logprobs, reference.logprobs, atol=1e-5, rtol=0)
    if temperature > 0:
        # The EOS bias must make rows stop at different steps, or the test would not exercise finished rows.
        lengths = cached.response_mask.sum(1)
        assert cached.finished.any() and len(set(lengths.tolist())) > 1


def test_kv_cache_decode_logits_equal_full_forward():
    """Prefill + one-token-at-a-time decoding gives the logits of one forward pass over the whole sequence."""
    model = tiny_gpt()
    _, ids, mask = left_padded_prompts()
    extra = torch.randint(0, 256, (ids.size(0), 5))
    full_ids = torch.cat([ids, extra], 1)
    full_mask = torch.cat([mask, torch.ones_like(extra, dtype=torch.bool)], 1)
    with torch.no_grad():
        full = model(full_ids, full_mask)
        cache = model.new_cache(ids.size(0), full_ids.size(1))
        steps = [model(ids, mask, cache)[:, -1]]
        for t in range(extra.size(1)):
            steps.append(
                model(extra[:, t : t + 1], torch.ones(ids.size(0), 1, dtype=torch.bool), cache)[:, -1]
            )
    P = ids.size(1)
    for i, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[:, P - 1 + i], atol=1e-5, rtol=1e-5)


def test_lean_decode_step_equals_the_general_path_including_finished_rows():
    """The one-token fast path (`GPT._decode_step`) gives the general cached forward's logits for every live row."""
    model = tiny_gpt(eos_bias=1.0)
    _, ids, mask = left_padded_prompts()
    B = ids.size(0)
    toks = torch.randint(0, 256, (B, 6), generator=torch.Generator().manual_seed(3))
    live = torch.ones(B, 6, dtype=torch.bool)
    live[1, 2:] = False  # row 1 finished after two tokens: later tokens are padding
    out = {}
    with torch.inference_mode():
        for lean in (True, False):
            model.lean_decode = lean
            cache = model.new_cache(B, ids.size(1) + 6)
            logits = [model(ids, mask, cache)[:, -1]]
            logits += [model(toks[:, t : t + 1], live[:, t : t + 1], cache)[:, -1] for t in range(6)]
            out[lean] = (torch.stack(logits, 1), cache)
    model.lean_decode = True
    (fast, cache), (general, _) = out[True], out[False]
    assert isinstance(cache.lean_weights, list), "the lean step must have been taken"
    # Row 1's outputs after its last real token are never read (sampling pads them).
    read = torch.ones(B, 7, dtype=torch.bool)
    read[1, 3:] = False
    torch.testing.assert_close(fast[read], general[read], atol=1e-5, rtol=1e-5)
    assert torch.equal(cache.next_pos, torch.tensor([11, 4, 15, 9]))  # real tokens counted: prompt + live


def test_prefill_of_left_padded_prompts_equals_one_forward():
    """The prefill runs its per-token layers on the real prompt tokens only (TokenGrid) and fills the cache from
    the grid: the logits must be those of a plain forward over each whole sequence - at the prefill and at every
    decode step after it."""
    model = tiny_gpt()
    gen = torch.Generator().manual_seed(4)
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 9, 2]
    prompts = [[257] + torch.randint(0, 256, (n,), generator=gen).tolist() for n in lengths]
    ids, mask = pad(prompts, PAD, side="left")
    extra = torch.randint(0, 256, (len(prompts), 4), generator=gen)
    full_ids = torch.cat([ids, extra], 1)
    full_mask = torch.cat([mask, torch.ones_like(extra, dtype=torch.bool)], 1)
    with torch.inference_mode():
        full = model(full_ids, full_mask)
        cache = model.new_cache(len(prompts), full_ids.size(1))
        cache.k.fill_(float("nan"))  # uninitialised memory can hold NaN: no slot may leak it into the logits
        cache.v.fill_(float("nan"))
        prefill = model(ids, mask, cache)
        steps = [model(extra[:, t : t + 1], None, cache)[:, -1] for t in range(4)]
    P = ids.size(1)
    torch.testing.assert_close(
        prefill[mask], full[:, :P][mask], atol=1e-5, rtol=1e-5
    )  # every real prompt token
    assert torch.equal(cache.key_mask[:, :P], mask)
    for t, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[:, P + t], atol=1e-5, rtol=1e-5)


def test_prefill_at_the_last_column_only_fills_the_same_cache():
    """Sampling's prefill asks for the last column only (the last block skips every other position's attention
    output and MLP): its logits, every layer's cached keys and values and the next decode step must be those of
    the prefill that computes every position."""
    model = tiny_gpt()
    _, ids, mask = left_padded_prompts()
    B, P = ids.shape
    nxt = torch.randint(0, 256, (B, 1), generator=torch.Generator().manual_seed(5))
    out = []
    with torch.inference_mode():
        for from_start in (True, False):
            cache = model.new_cache(B, P + 1)
            first = next_token_logits(model, ids, mask, cache, from_start=from_start)
            out.append((first, cache, next_token_logits(model, nxt, None, cache)))
    (last_only, c1, step1), (every, c2, step2) = out
    torch.testing.assert_close(last_only, every, atol=1e-5, rtol=1e-5)
    real = c2.key_mask[:, :P]  # slots of padding hold zeros or garbage: never attended to
    for kv1, kv2 in ((c1.k, c2.k), (c1.v, c2.v)):
        torch.testing.assert_close(
            kv1[:, :, :, :P].transpose(2, 3)[:, real], kv2[:, :, :, :P].transpose(2, 3)[:, real]
        )
    torch.testing.assert_close(step1, step2, atol=1e-5, rtol=1e-5)


def test_lora_wrapped_gpt_decodes_through_its_adapters():
    """A LoRA-wrapped layer must run its own forward: such a model takes the general path, with the adapters."""
    from rlhf.models.lora import apply_lora

    model = tiny_gpt()
    apply_lora(model, rank=2)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # adapters start as a no-op; make them matter
    _, ids, mask = left_padded_prompts()
    extra = torch.randint(0, 256, (ids.size(0), 3))
    with torch.inference_mode():
        full = model(
            torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra, dtype=torch.bool)], 1)
        )
        cache = model.new_cache(ids.size(0), ids.size(1) + 3)
        model(ids, mask, cache)
        steps = [model(extra[:, t : t + 1], None, cache)[:, -1] for t in range(3)]
    assert cache.lean_weights is False
    P = ids.size(1)
    for t, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[:, P + t], atol=1e-5, rtol=1e-5)


def test_sample_categorical_draws_each_id_with_its_probability():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    logp = probs.log().expand(20_000, -1)
    draws = sample_categorical(logp, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=6).double() / draws.numel()
    assert freq[1] == 0 and freq[5] == 0, "ids of probability 0 are never drawn (first, middle and last)"
    # 20k draws: standard error <= sqrt(.25/20000) = 0.0035; 4 sigma.
    assert (freq - probs.double()).abs().max() < 0.014, freq
    again = sample_categorical(logp, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again), "seeded draws are reproducible"


# ------------------------------------------------------------------------------------------------ padding
def test_left_and_right_padding_do_not_change_logits():
    model = tiny_gpt()
    prompts, left_ids, left_mask = left_padded_prompts()
    right_ids, right_mask = pad(prompts, PAD, side="right")
    with torch.no_grad():
        left = model(left_ids, left_mask)
        right = model(right_ids, right_mask)
        for b, p in enumerate(prompts):
            alone = model(torch.tensor([p]))[0]  # (T, V), no padding and no mask at all
            n = len(p)
            torch.testing.assert_close(left[b, -n:], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(right[b, :n], alone, atol=1e-5, rtol=1e-5)


def test_padding_changes_logits_without_mask():
    """Guard that the invariance test above has teeth: the pads do matter when the mask is dropped."""
    model = tiny_gpt()
    prompts, left_ids, _ = left_padded_prompts()
    with torch.no_grad():
        unmasked = model(left_ids)[1, -1]
        alone = model(torch.tensor([prompts[1]]))[0, -1]
    assert not torch.allclose(unmasked, alone, atol=1e-3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_forward_at_positions_equals_the_full_forward_read_there(side):
    """Training and scoring forwards compute per-token layers on real tokens only and, given `positions`, the last
    block only there (PPO reads the response positions). Logits and gradients must be the full forward's at
    those positions; a padding position among them (a response's padding after its EOS) stays finite."""
    model = tiny_gpt(n_layer=3).train()
    prompts, _, _ = left_padded_prompts()
    ids, mask = pad(prompts, PAD, side=side)
    positions = torch.tensor(
        [[0, 4, 2], [1, 0, 1], [8, 3, 5], [2, 1, 7]]
    )  # row 1 has 2 real tokens, row 3 has 3
    real = mask.gather(1, positions) if side == "right" else torch.ones_like(positions, dtype=torch.bool)
    if side == "left":  # left padding: count positions from the first real token
        positions = positions.clamp(max=torch.tensor([[len(p) - 1] for p in prompts])) + (
            ids.size(1) - torch.tensor([[len(p)] for p in prompts])
        )
    weights = torch.randn(*positions.shape, V)

    def loss(logits):
        return (logits * weights * real.unsqueeze(-1)).sum()

    full = model(ids, mask)
    at = full.gather(1, positions.unsqueeze(-1).expand(-1, -1, V))
    loss(at).backward()
    want = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad()
    got = model(ids, mask, positions=positions)
    loss(got).backward()
    assert got.shape == (4, 3, V) and torch.isfinite(got).all()
    torch.testing.assert_close(got[real], at[real], atol=1e-5, rtol=1e-5)
    for n, q in model.named_parameters():
        torch.testing.assert_close(q.grad, want[n], atol=1e-5, rtol=1e-4, msg=n)


def test_gelu_tanh_is_gpt2s_gelu_in_value_and_gradient():
    """The MLP's GELU is computed as x * sigmoid(...) with a stored derivative (faster on CPU): it must be
    F.gelu(approximate="tanh") - GPT-2's gelu_new, what exported models compute - within float32 rounding."""
    from rlhf.models.gpt import gelu_tanh

    x = torch.cat([torch.linspace(-30, 30, 20001), torch.tensor([0.0, -1e-8, 1e-8, 80.0, -80.0])])
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, want = gelu_tanh(mine), F.gelu(ref, approximate="tanh")
    torch.testing.assert_close(y, want, atol=2e-6, rtol=1e-5)
    g = torch.randn_like(x)
    y.backward(g)
    want.backward(g)
    torch.testing.assert_close(mine.grad, ref.grad, atol=2e-5, rtol=1e-5)
    with torch.inference_mode():  # no derivative kept without autograd; the same values
        torch.testing.assert_close(gelu_tanh(x), want.detach(), atol=2e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ sampling
class ScriptedLM(nn.Module):
    """A fake LM that knows only ids: at decode step s, row b puts all mass on `script[b][s]`."""

    def __init__(self, script: list[list[int]], vocab: int = V):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0

    def new_cache(self, batch_size, max_len):
        return object()

    def forward(self, ids, attention_mask=None, cache=None):
        B, T = ids.shape
        logits = torch.full((B, T, self.vocab), -30.0)
        for b in range(B):
            logits[b, -1, self.script[b][self.calls]] = 30.0
        self.calls += 1
        return logits


def test_sample_masks_after_first_eos_and_flags_finished():
    script = [
        [65, 66, EOS, 67, 68, 69],  # EOS at step 2: tokens after it are padding
        [70, 71, 72, 73, 74, 75],  # never finishes
        [EOS, 80, 81, 82, 83, 84],  # EOS first
    ]
    model = ScriptedLM(script)
    ids = torch.tensor([[PAD, 257, 1], [257, 2, 3], [PAD, PAD, 257]])
    mask = ids != PAD
    r = sample(model, ids, mask, 6, EOS, PAD, temperature=0.0)
    assert r.response_ids.tolist() == [
        [65, 66, EOS, PAD, PAD, PAD],
        [70, 71, 72, 73, 74, 75],
        [EOS, PAD, PAD, PAD, PAD, PAD],
    ]
    assert r.response_mask.tolist() == [
        [True, True, True, False, False, False],
        [True] * 6,
        [True, False, False, False, False, False],
    ]
    assert r.finished.tolist() == [True, False, True]
    assert (r.logprobs[~r.response_mask] == 0).all()
    assert torch.allclose(r.logprobs[r.response_mask], torch.zeros(()), atol=1e-6)  # all mass on the pick


def test_sample_stops_once_every_row_has_finished():
    model = ScriptedLM([[1, EOS] + [2] * 8, [EOS] + [3] * 9])
    ids = torch.tensor([[257], [257]])
    r = sample(model, ids, torch.ones_like(ids, dtype=torch.bool), 10, EOS, PAD, temperature=0.0)
    assert model.calls == 2  # prefill + one decode step, then every row is done
    assert r.response_ids.tolist() == [[1, EOS] + [PAD] * 8, [EOS] + [PAD] * 9]


def test_sample_logprobs_are_under_the_sampling_distribution():
    """log-probs are log_softmax(logits / temperature) at the sampled id (temperature-scaled, as PPO needs)."""
    logits_row = torch.randn(V, generator=torch.Generator().manual_seed(0)) * 3

    class Fixed(nn.Module):
        def new_cache(self, b, n):
            return object()

        def forward(self, ids, attention_mask=None, cache=None):
            return logits_row.expand(ids.size(0), ids.size(1), V).clone()

    ids = torch.full((3, 2), 7)
    r = sample(Fixed(), ids, torch.ones_like(ids, dtype=torch.bool), 5, -1, PAD, temperature=0.5,
               generator=torch.Generator().manual_seed(1))  # fmt: skip
    expected = torch.log_softmax(logits_row / 0.5, -1)[r.response_ids]
    torch.testing.assert_close(r.logprobs, expected)
    assert not r.finished.any() and r.response_mask.all()


def test_response_mask_from_ids():
    ids = torch.tensor([[1, EOS, 2, EOS], [EOS, EOS, 3, 4], [1, 2, 3, 4]])
    assert response_mask_from_ids(ids, EOS).tolist() == [
        [True, True, False, False],
        [True, False, False, False],
        [True, True, True, True],
    ]


def test_top_k_1_equals_greedy():
    model = tiny_gpt(eos_bias=1.0)
    _, ids, mask = left_padded_prompts()
    greedy = sample(model, ids, mask, 12, EOS, PAD, temperature=0.0)
    top1 = sample(model, ids, mask, 12, EOS, PAD, temperature=1.3, top_k=1,
                  generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert torch.equal(top1.response_ids, greedy.response_ids)
    # With one token left the sampling distribution is a point mass: log-prob 0.
    assert torch.allclose(top1.logprobs, torch.zeros(()), atol=1e-6)


def test_filter_logits_top_p_keeps_smallest_nucleus():
    # Probabilities 0.05, 0.5, 0.15, 0.3 (unsorted on purpose). Sorted: 0.5, 0.3, 0.15, 0.05;
    # cumulative 0.5, 0.8, 0.95, 1.0. The smallest prefix whose mass reaches p:
    #   p=0.4  -> {0.5}              (0.5 >= 0.4)
    #   p=0.6  -> {0.5, 0.3}         (0.5 < 0.6 <= 0.8)
    #   p=0.9  -> {0.5, 0.3, 0.15}   (0.8 < 0.9 <= 0.95)
    #   p=0.99 -> all four
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    kept = {p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist() for p in (0.4, 0.6, 0.9, 0.99)}
    assert kept[0.4] == [False, True, False, False]
    assert kept[0.6] == [False, True, False, True]
    assert kept[0.9] == [False, True, True, True]
    assert kept[0.99] == [True, True, True, True]
    # Kept logits are unchanged (renormalisation is the softmax's job).
    out = filter_logits(logits, top_p=0.6)
    assert out[0, 1] == logits[0, 1] and out[0, 3] == logits[0, 3]
    # Rows are filtered independently; top-k composes with top-p.
    two = torch.cat([logits, logits.flip(1)])
    assert torch.isfinite(filter_logits(two, top_p=0.6)).tolist() == [
        [False, True, False, True],
        [True, False, True, False],
    ]
    assert torch.isfinite(filter_logits(logits, top_k=3, top_p=0.99))[0].tolist() == [False, True, True, True]
    assert torch.equal(filter_logits(logits), logits)


# ------------------------------------------------------------------------------------------------ scalar head
class IdTrunk(nn.Module):
    """A trunk whose hidden state is the token id itself, so the head's output reveals which token it read."""

    hidden_size = 1

    def hidden(self, ids, attention_mask=None):
        return ids.float().unsqueeze(-1)


def id_scorer(pooling: str = "last") -> ScalarModel:
    model = ScalarModel(IdTrunk(), pooling=pooling)
    with torch.no_grad():
        model.head.weight.fill_(1.0)
        model.head.bias.zero_()
    return model


@pytest.mark.parametrize("side", ["left", "right"])
def test_score_reads_last_real_token(side):
    BAD = 999  # a distinctive pad id: reading any pad position would score 999
    seqs = [[5, 6, 7], [11], [21, 22, 23, 24, 25]]
    ids, mask = pad(seqs, BAD, side=side)
    assert last_token_index(mask).tolist() == ([4, 4, 4] if side == "left" else [2, 0, 4])
    assert id_scorer().score(ids, mask).tolist() == [7.0, 11.0, 25.0]
    mean = id_scorer("mean").score(ids, mask)
    torch.testing.assert_close(mean, torch.tensor([6.0, 11.0, 23.0]))


def test_last_token_index_without_padding():
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert last_token_index(mask).tolist() == [3, 3]


def test_gpt_reward_score_is_padding_invariant():
    torch.manual_seed(0)
    rm = ScalarModel(tiny_gpt(), pooling="last").eval()
    seqs = [[257, 5, 6, 7, 258], [257, 9, 258], [257, 1, 2, 3, 4, 5, 6, 258]]
    with torch.no_grad():
        alone = torch.stack(
            [rm.score(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.bool))[0] for s in seqs]
        )
        left = rm.score(*pad(seqs, PAD, side="left"))
        right = rm.score(*pad(seqs, PAD, side="right"))
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_pairs_score_and_backprop_exactly_as_two_rows(pooling):
    """Shared-prefix packing (one row per pair) is the same function as scoring chosen and rejected separately."""
    chosen = [[257, 1, 2, 3, 5, 258], [257, 4, 258], [257, 7, 8, 9, 258], [257, 6, 6, 258]]
    rejected = [[257, 1, 2, 6, 258], [257, 4, 258], [257, 7, 7, 7, 7, 7, 258], [257, 9, 258]]
    grads, scores = [], []
    for packed in (True, False):
        torch.manual_seed(0)
        rm = ScalarModel(tiny_gpt(), pooling=pooling)
        if packed:
            ids, segments = pack_pairs(chosen, rejected, PAD)
            c, r = rm.score_pairs(ids, segments, PAD)
        else:
            s = rm.score(*pad(chosen + rejected, PAD, side="right"))
            c, r = s[:4], s[4:]
        (c - 2 * r).sum().backward()
        scores.append(torch.stack([c, r]).detach())
        grads.append(torch.cat([p.grad.flatten() for p in rm.parameters()]))
    torch.testing.assert_close(scores[0], scores[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert scores[0][0, 1] == scores[0][1, 1], "an identical pair scores the same twice"


def test_trunks_without_packed_reading_score_pairs_as_two_rows():
    """A trunk without `reads_packed_pairs` (a bidirectional encoder, an HF LM) gets the unpacked rows back."""
    chosen, rejected = [[5, 6, 7], [11, 12]], [[5, 6, 9, 9], [13]]
    model = id_scorer()
    c, r = model.score_pairs(*pack_pairs(chosen, rejected, 999), 999)
    assert c.tolist() == [7.0, 12.0] and r.tolist() == [9.0, 13.0]


# ------------------------------------------------------------------------------------------------ names
def test_parameter_names_are_gpt2_like_and_embeddings_tied():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32))
    names = set(model.state_dict())
    for name in (
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.ln_2.bias",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_proj.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    ):
        assert name in names, name
    assert model.lm_head.weight is model.transformer.wte.weight
    assert tuple(model.transformer.h[0].attn.c_attn.weight.shape) == (96, 32)
    # The tied matrix is counted once.
    assert model.num_params() == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert "lm_head.weight" not in dict(model.named_parameters())
