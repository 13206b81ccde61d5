"""Preference pairs as the training stages read them (`rlhf reward`, `rlhf dpo`): load, encode, pack, bucket.

A pair is (prompt, chosen, rejected[, margin]); each side is encoded as `[bos] + prompt + response + [eos]` with
the same truncation rule as SFT (oldest prompt tokens first, counted). On a causal trunk that reads packed rows
(the built-in GPT) a pair is one row: the shared prompt once, then both responses (`collate.pack_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.data.collate import Encoded, encode_prompt_response, pack_pairs, shared_prefix_length
from rlhf.data.loader import load_mixture
from rlhf.data.tokenizer import Tokenizer
from rlhf.tasks import get_task, task_options


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    margin: float | None
    gold_agrees: bool | None = (
        None  # built-in task: does the gold judge prefer `chosen`? (None for user data)
    )

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def load_pair_data(cfg, split_user_file: bool) -> tuple[list[dict], list[dict], object]:
    """(train pairs, held-out pairs, task or None) as dicts with prompt/chosen/rejected/margin[/gold_agrees]."""
    paths = (
        cfg.data if isinstance(cfg.data, list) else [cfg.data] if cfg.data else []
    )  # reward eval: one file
    if not paths:
        t = cfg.task
        task = get_task(t.name, seed=cfg.seed, **task_options(t))

        def pairs(split: str, n: int) -> list[dict]:
            return [
                {**p, "margin": None, "gold_agrees": p["gold_chosen"] > p["gold_rejected"]}
                for p in task.preference_pairs(n, split=split)
            ]

        return pairs("train", t.n_train if split_user_file else 0), pairs("test", t.n_eval), task
    train, evals = load_mixture(
        paths,
        "pairs",
        cfg.keys.column_keys(),
        getattr(cfg, "data_weights", ()),
        cfg.seed,
        cfg.keys.split,
        cfg.eval_fraction if split_user_file else None,
    )

    def rows(pairs) -> list[dict]:
        return [
            {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "margin": p.margin}
            for p in pairs
        ]

    return (rows(train), rows(evals), None) if split_user_file else ([], rows(train), None)


def encode_pairs(
    tok: Tokenizer, rows: list[dict], max_length: int, use_margin: bool = True
) -> list[EncodedPair]:
    """Tokenise (prompt, chosen) and (prompt, rejected), EOS appended so the score is read at the EOS."""
    return [
        EncodedPair(
            encode_prompt_response(tok, r["prompt"], r["chosen"], max_length),
            encode_prompt_response(tok, r["prompt"], r["rejected"], max_length),
            r.get("margin") if use_margin else None,
            r.get("gold_agrees"),
        )
        for r in rows
    ]


def pair_batch(pairs: list[EncodedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed pairs `(ids, segments)` (B, T): the shared prompt once, then both responses
    (`ScalarModel.score_pairs` scores chosen and rejected in one forward pass)."""
    return pack_pairs([p.chosen.ids for p in pairs], [p.rejected.ids for p in pairs], pad_id)


def batch_lengths(packed: bool, pairs: list[EncodedPair]) -> list[int]:
    """Each pair's share of a padded batch, for length bucketing: its packed row where the model reads packed
    pairs (`packed`), else the longer of its two rows."""
    if packed:
        return [len(p.chosen.ids) + len(p.rejected.ids) - shared_prefix_length(p.chosen.ids, p.rejected.ids)
                for p in pairs]  # fmt: skip
    return [max(len(p.chosen.ids), len(p.rejected.ids)) for p in pairs]
