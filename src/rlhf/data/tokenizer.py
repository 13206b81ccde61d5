"""Tokenizers behind one small interface: text <-> ids, plus pad/bos/eos ids.

`ByteTokenizer` is the built-in model's tokenizer: ids 0..255 are byte values, 256 <|pad|>, 257 <|bos|>,
258 <|eos|> (the same ids as the TRL peer harness, so benchmarks run identical work).
`HFTokenizer` adapts a Hugging Face tokenizer (optional extra `rlhf[hf]`) to the same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rlhf.errors import UserError


class Tokenizer(Protocol):
    pad_id: int
    bos_id: int
    eos_id: int
    vocab_size: int
    add_bos: bool

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens; decode skips special ids and replaces broken UTF-8 sequences."""

    pad_id, bos_id, eos_id = 256, 257, 258
    vocab_size = 259
    add_bos = True
    name = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer behind the `Tokenizer` interface.

    Models without a pad token (GPT-2) get the EOS id as pad id only for *padding*: every stage masks
    padding by the attention mask, never by comparing ids, so a shared id is safe.
    """

    name = "hf"

    def __init__(self, path: str):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise UserError("Hugging Face models need the extra: pip install 'rlhf[hf]'") from e
        self.tok = AutoTokenizer.from_pretrained(path)
        self.path = path
        eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.sep_token_id
        if eos is None:
            raise UserError(
                f"{path}: tokenizer has neither an EOS nor a SEP token; set one in tokenizer_config.json"
            )
        self.eos_id = int(eos)
        bos = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.cls_token_id
        self.bos_id = int(bos) if bos is not None else self.eos_id
        # Prepend BOS for a real, distinct BOS token (Llama-style; GPT-2's bos == eos and Qwen has none), and
        # for encoders whose own template starts with [CLS] (BERT, MiniLM): they were pretrained on
        # `[CLS] text [SEP]`, and the EOS we append is their [SEP].
        self.add_bos = (
            self.tok.bos_token_id is not None and int(self.tok.bos_token_id) != self.eos_id
        ) or self._template_starts_with(self.bos_id)
        self.pad_id = int(self.tok.pad_token_id) if self.tok.pad_token_id is not None else self.eos_id
        self.vocab_size = len(self.tok)

    def _template_starts_with(self, token_id: int) -> bool:
        """Does the tokenizer's own special-token template put `token_id` before the text?"""
        if token_id == self.eos_id:
            return False
        plain = self.encode("a")
        full = list(self.tok("a")["input_ids"])
        return len(full) > len(plain) and full[0] == token_id and full[1 : 1 + len(plain)] == plain

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)
