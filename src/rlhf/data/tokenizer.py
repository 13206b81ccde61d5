"""Tokenizers behind one small interface: text <-> ids, plus pad/bos/eos ids.

`ByteTokenizer` is the built-in model's tokenizer: ids 0..255 are byte values, 256 <|pad|>, 257 <|bos|>,
258 <|eos|> (the same ids as the TRL peer harness, so benchmarks run identical work).
`HFTokenizer` adapts a Hugging Face tokenizer (optional extra `rlhf[hf]`) to the same interface.

`format_prompt` is where a prompt becomes the text the model reads: unchanged for the byte tokenizer, wrapped in
the chat template for a Hugging Face tokenizer that has one. Encoding (`rlhf.data.collate`) calls it, so no stage
ever asks which tokenizer it holds. `apply_chat` renders a whole conversation (a list of messages): with the
tokenizer's chat template, or `rlhf.data.chat.plain_template` when it has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rlhf.data.chat import plain_template
from rlhf.errors import UserError


class Tokenizer(Protocol):
    pad_id: int
    bos_id: int
    eos_id: int
    vocab_size: int
    add_bos: bool

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def format_prompt(self, prompt: str) -> str: ...

    def apply_chat(self, messages: list[dict], add_generation_prompt: bool) -> str: ...


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

    def format_prompt(self, prompt: str) -> str:
        return prompt

    def apply_chat(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return plain_template(messages, add_generation_prompt)


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

    def format_prompt(self, prompt: str) -> str:
        """The prompt as one user turn of the chat template, ready for the assistant's answer, when the tokenizer
        has a template (chat/instruct models were trained on that layout); otherwise the prompt itself."""
        if not getattr(self.tok, "chat_template", None):
            return prompt
        return self.apply_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)

    def apply_chat(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """A conversation through the chat template (the plain template when there is none), without the leading
        BOS text the template may write: encoding adds the BOS id itself."""
        if not getattr(self.tok, "chat_template", None):
            return plain_template(messages, add_generation_prompt)
        text = self.tok.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        bos = self.tok.bos_token
        if self.add_bos and bos and text.startswith(bos):  # encode_prompt adds the BOS id itself
            text = text[len(bos) :]
        return text


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Do `a` and `b` turn the same text into the same ids (so one's ids can be fed to the other's model)?

    False means text must be decoded and re-encoded between them (e.g. a GPT-2 policy and a BERT reward model).
    """
    if getattr(a, "name", None) != getattr(b, "name", None):
        return False
    if a.name == "byte":
        return True
    same_specials = (a.pad_id, a.bos_id, a.eos_id, a.add_bos) == (b.pad_id, b.bos_id, b.eos_id, b.add_bos)
    same_template = getattr(a.tok, "chat_template", None) == getattr(b.tok, "chat_template", None)
    return same_specials and same_template and a.tok.get_vocab() == b.tok.get_vocab()
