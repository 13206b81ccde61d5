"""Tiny Hugging Face models built locally for tests: nothing is fetched from a hub.

`gpt2_dir` writes a 2-layer, 32-wide GPT-2-architecture causal LM with a byte-level BPE tokenizer trained on the
built-in task's text; `bert_dir` a 2-layer BERT encoder with a WordPiece tokenizer. Both are ordinary
`save_pretrained` directories, the same as a user's local model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf.tasks import get_task


def task_texts(n: int = 300) -> list[str]:
    task = get_task("instruct", seed=0)
    return [t for e in task.sft_examples(n, split="train") for t in (e["prompt"], e["response"])]


def gpt2_dir(path: Path, chat_template: str | None = None, seed: int = 0) -> Path:
    """A tiny GPT-2 (2 layers, 32 wide, 256 positions) and its byte-level BPE tokenizer, saved in `path`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(task_texts(), trainer)
    eos = "<|endoftext|>"
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos)
    if chat_template is not None:
        hf_tok.chat_template = chat_template
    hf_tok.save_pretrained(str(path))
    eos_id = hf_tok.convert_tokens_to_ids(eos)
    config = GPT2Config(
        vocab_size=len(hf_tok),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(str(path))
    return path


def bert_dir(path: Path, seed: int = 0) -> Path:
    """A tiny BERT encoder (2 layers, 32 wide) and its WordPiece tokenizer ([CLS] text [SEP]), saved in `path`."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(task_texts(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    hf_tok.save_pretrained(str(path))
    config = BertConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=hf_tok.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(path))
    return path


def tiny_causal_lms(vocab: int, n_layer: int):
    """(built-in GPT, HF GPT-2 behind `HFCausalLM`) factories of the same tiny shape (32 wide, 2 heads, 32
    positions), random weights, dropout 0 (so train mode computes the same function as eval mode)."""
    from rlhf.models.gpt import GPT, GPTConfig
    from rlhf.models.hf import HFCausalLM

    def built_in() -> torch.nn.Module:
        return GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=n_layer, n_head=2, n_embd=32))

    def hf_gpt2() -> torch.nn.Module:
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=32,
            n_embd=32,
            n_layer=n_layer,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
        )
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
        return HFCausalLM(GPT2LMHeadModel(config))

    return built_in, hf_gpt2
