"""ByteTokenizer: UTF-8 round trip and special ids."""

from __future__ import annotations

from rlhf.data.tokenizer import ByteTokenizer


def test_byte_tokenizer_round_trip_non_ascii() -> None:
    tok = ByteTokenizer()
    text = "héllo ✓"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and len(ids) == 10
    assert tok.decode(ids) == text
    # Special ids are skipped when decoding.
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == text


def test_byte_tokenizer_special_ids() -> None:
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size, tok.add_bos) == (256, 257, 258, 259, True)
