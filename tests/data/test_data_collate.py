"""Collation: truncation rules, padding, the SFT loss mask convention, and length bucketing."""

from __future__ import annotations

import pytest
import torch

from rlhf.data.collate import (
    Encoded,
    encode_prompt,
    encode_prompt_response,
    length_bucketed_batches,
    pack_pairs,
    pad,
    padding_fraction,
    sft_batch,
    unpack_pairs,
)
from rlhf.data.tokenizer import ByteTokenizer
from rlhf.errors import UserError

TOK = ByteTokenizer()
BOS, EOS, PAD = TOK.bos_id, TOK.eos_id, TOK.pad_id


class NoBosTokenizer(ByteTokenizer):
    add_bos = False


def b(text: str) -> list[int]:
    return list(text.encode())


def test_encode_fits() -> None:
    e = encode_prompt_response(TOK, "ab", "cd", max_length=6)
    assert e == Encoded([BOS, *b("abcd"), EOS], prompt_len=3, truncated=False)
    assert encode_prompt_response(TOK, "ab", "cd", max_length=6, add_eos=False).ids == [BOS, *b("abcd")]


def test_truncation_drops_oldest_prompt_tokens_keeps_bos_response_eos() -> None:
    e = encode_prompt_response(TOK, "abcdefghij", "XYZ", max_length=8)
    assert e == Encoded([BOS, *b("hij"), *b("XYZ"), EOS], prompt_len=4, truncated=True)


def test_response_longer_than_room_keeps_its_start_and_the_eos() -> None:
    e = encode_prompt_response(TOK, "prompt", "0123456789", max_length=6)
    assert e == Encoded([BOS, *b("0123"), EOS], prompt_len=1, truncated=True)


def test_encode_without_bos() -> None:
    e = encode_prompt_response(NoBosTokenizer(), "abc", "d", max_length=3)
    assert e == Encoded([*b("cd"), EOS], prompt_len=1, truncated=True)


def test_max_length_too_small() -> None:
    with pytest.raises(UserError, match="max_length=2"):
        encode_prompt_response(TOK, "a", "b", max_length=2)


def test_encode_prompt_left_truncates_and_keeps_bos() -> None:
    assert encode_prompt(TOK, "abcdef", 4) == ([BOS, *b("def")], True)
    assert encode_prompt(TOK, "ab", 4) == ([BOS, *b("ab")], False)


def test_pad_right_and_left() -> None:
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and ids.dtype == torch.long
    assert mask.tolist() == [[True, True, True], [True, False, False]] and mask.dtype == torch.bool
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    with pytest.raises(ValueError):
        pad([[1]], 0, side="middle")


def test_sft_loss_mask_hand_example() -> None:
    # Row 0: [bos a b | c eos]  -> targets c (t=3) and eos (t=4) sit at positions 2 and 3.
    # Row 1: [bos | q eos] pad pad -> targets q and eos sit at positions 0 and 1; padding is never a target.
    encoded = [encode_prompt_response(TOK, "ab", "c", 16), encode_prompt_response(TOK, "", "q", 16)]
    batch = sft_batch(encoded, PAD)
    assert batch["input_ids"].tolist() == [[BOS, 97, 98, 99, EOS], [BOS, 113, EOS, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["loss_mask"].int().tolist() == [[0, 0, 1, 1, 0], [1, 1, 0, 0, 0]]
    # The masked next-token targets are exactly the response tokens plus eos.
    targets = batch["input_ids"][:, 1:][batch["loss_mask"][:, :-1]]
    assert targets.tolist() == [99, EOS, 113, EOS]


def test_bucketing_covers_every_index_once_and_is_deterministic() -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    batches = length_bucketed_batches(lengths, 8, torch.Generator().manual_seed(0))
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert all(len(batch) == 8 for batch in batches)
    assert batches == length_bucketed_batches(lengths, 8, torch.Generator().manual_seed(0))
    assert batches != length_bucketed_batches(lengths, 8, torch.Generator().manual_seed(1))
    unshuffled = length_bucketed_batches(lengths, 7, None, shuffle=False)
    assert sorted(i for batch in unshuffled for i in batch) == list(range(1000))
    assert unshuffled == length_bucketed_batches(lengths, 7, None, shuffle=False)
    assert length_bucketed_batches([], 4, None) == []


def test_bucketing_reduces_padding() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 500, (2000,), generator=g).tolist()
    perm = torch.randperm(2000, generator=g).tolist()
    random_batches = [perm[i : i + 16] for i in range(0, 2000, 16)]
    bucketed = length_bucketed_batches(lengths, 16, g)
    assert padding_fraction(lengths, bucketed) < 0.05 < 0.3 < padding_fraction(lengths, random_batches)


# ------------------------------------------------------------------------------------------------ packed pairs
def test_pack_pairs_stores_the_shared_prefix_once_by_hand():
    chosen = [[9, 1, 2, 3, 5, 8], [9, 4, 8], [9, 7, 8]]
    rejected = [[9, 1, 2, 6, 8], [9, 4, 8], [9, 7, 7, 7, 8]]
    ids, segments = pack_pairs(chosen, rejected, pad_id=0)
    assert ids.tolist() == [
        [9, 1, 2, 3, 5, 8, 6, 8],  # prefix 9 1 2 | chosen 3 5 8 | rejected 6 8
        [9, 4, 8, 8, 0, 0, 0, 0],  # identical pair: each keeps its last token (the one scored)
        [9, 7, 8, 7, 7, 8, 0, 0],  # the prefix stops where they differ
    ]
    assert segments.tolist() == [
        [0, 0, 0, 1, 1, 1, 2, 2],
        [0, 0, 1, 2, -1, -1, -1, -1],
        [0, 0, 1, 2, 2, 2, -1, -1],
    ]
    back, mask = unpack_pairs(ids, segments, pad_id=0)
    expected, expected_mask = pad(chosen + rejected, 0, side="right")
    assert torch.equal(back, expected) and torch.equal(mask, expected_mask)
