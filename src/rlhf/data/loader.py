"""Read training data: one loader for every stage and for `rlhf data validate`.

Where rows come from (JSONL/JSON/CSV, Parquet, directories of shards, `save_to_disk` directories) is
`rlhf.data.containers`; this module decides what the rows mean.

Schemas (see `detect_schema`; names follow TRL's dataset formats, text or conversational):
  pairs                prompt, chosen, rejected text (+ optional margin)          preference, explicit prompt
  pairs_implicit       chosen, rejected as whole HH-RLHF transcripts              preference, implicit prompt
  sft                  prompt, response (or completion) text                      prompt-completion
  prompts              prompt text                                                prompt-only
  messages             messages: a conversation; every assistant turn is trained  conversational language modeling
  chat_sft             prompt + completion as messages                            conversational prompt-completion
  chat_pairs           prompt + chosen, rejected as messages                      conversational preference
  chat_pairs_implicit  chosen, rejected as whole conversations                    conversational implicit preference
  chat_prompts         prompt as messages                                         conversational prompt-only

A conversation stays a list of `{"role", "content"}` messages until it is tokenised: the chat template is applied
exactly once, by `rlhf.data.collate`, never here. Every mistake raises `DataError(path, location, message)`
that says what is wrong and how to fix it. No row is ever dropped silently: a bad row stops the load.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from rlhf.data.chat import (
    check_messages,
    ends_with_assistant,
    is_conversation,
    split_at_first_answer,
    split_implicit,
)
from rlhf.data.containers import describe, iter_rows, shards
from rlhf.errors import DataError, UserError

SCHEMAS = (
    "pairs",
    "pairs_implicit",
    "sft",
    "prompts",
    "messages",
    "chat_sft",
    "chat_pairs",
    "chat_pairs_implicit",
    "chat_prompts",
)
PAIR_SCHEMAS = ("pairs", "pairs_implicit", "chat_pairs", "chat_pairs_implicit")
# HH-RLHF transcripts alternate "\n\nHuman: ..." and "\n\nAssistant: ..." turns.
ASSISTANT_MARKER = "\n\nAssistant:"

Text = str | list  # text, or a conversation (a list of {"role", "content"} messages)


@dataclass(frozen=True)
class ColumnKeys:
    """Names of the fields (JSON keys / CSV or Parquet columns) holding each part of an example."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    response: str = "response"
    margin: str = "margin"
    messages: str = "messages"
    completion: str = "completion"


# A module constant, not a call in each signature: ColumnKeys is frozen, so sharing one instance is safe.
DEFAULT_KEYS = ColumnKeys()


@dataclass(frozen=True)
class Pair:
    """A preference pair; `margin` is an optional preference strength, `line` the source location.

    Text, or conversations: `prompt` then a list of messages, `chosen` / `rejected` the answering messages."""

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None
    line: int


@dataclass(frozen=True)
class SFTExample:
    """A prompt and the response to imitate (text, or messages: the response's assistant turns are trained)."""

    prompt: Text
    response: Text
    line: int


def is_chat(schema: str) -> bool:
    return schema == "messages" or schema.startswith("chat_")


def _flag(keys: ColumnKeys, key: str) -> str:
    """The CLI flag that renames the field whose configured name is `key` (e.g. `--keys.chosen-key`)."""
    for f in fields(keys):
        if getattr(keys, f.name) == key:
            return f"--keys.{f.name}-key"
    return "--keys.*-key"


def _rename_hint(keys: ColumnKeys, key: str, found: list[str]) -> str:
    """How to point the loader at the right field, naming the closest existing one when there is one."""
    close = difflib.get_close_matches(key, found, n=1)
    if close:
        return f"if it is stored as {close[0]!r}, pass {_flag(keys, key)} {close[0]}"
    return f"add it, or if it is stored under another name, pass {_flag(keys, key)} NAME"


# ------------------------------------------------------------------------------------------------- schemas


def detect_schema(
    rows: Sequence[tuple[int, dict]], keys: ColumnKeys = DEFAULT_KEYS, path: str | Path = "<rows>"
) -> str:
    """Which schema the rows follow (one of `SCHEMAS`), judged by the fields of the first row: which are present,
    and whether they hold text or conversations (lists of messages).

    Later rows are checked field by field when they are converted, so a row missing a field or holding text
    where the first row held messages is reported with its own location.
    """
    if not rows:
        raise DataError(path, None, "file has no rows; add at least one example")
    line, row = rows[0]
    found = list(row)
    has = {f.name: getattr(keys, f.name) in row for f in fields(keys)}
    chat = any(
        is_conversation(row.get(getattr(keys, n))) for n in ("prompt", "chosen", "rejected", "messages")
    )
    if has["messages"] and not has["chosen"]:
        if not is_conversation(row[keys.messages]):
            raise DataError(
                path,
                line,
                f"field {keys.messages!r} is {describe(row[keys.messages])}, expected a list of "
                '{"role": ..., "content": ...} messages (in CSV: name the column messages:json)',
            )
        return "messages"
    if has["chosen"] and has["rejected"]:
        if chat:
            return "chat_pairs" if has["prompt"] else "chat_pairs_implicit"
        return "pairs" if has["prompt"] else "pairs_implicit"
    for present, missing in (("chosen", "rejected"), ("rejected", "chosen")):
        if has[present]:
            key = getattr(keys, missing)
            raise DataError(
                path,
                line,
                f"has {getattr(keys, present)!r} but no {key!r} field (found: {', '.join(found)}); "
                f"preference pairs need both - {_rename_hint(keys, key, found)}",
            )
    if has["prompt"]:
        if has["response"] or has["completion"]:
            return "chat_sft" if chat else "sft"
        return "chat_prompts" if chat else "prompts"
    raise DataError(
        path,
        line,
        f"no known schema in fields ({', '.join(found)}): expected {keys.prompt}+{keys.chosen}+{keys.rejected} "
        f"(pairs), {keys.chosen}+{keys.rejected} (whole transcripts or conversations), {keys.prompt}+"
        f"{keys.response} or {keys.prompt}+{keys.completion} (SFT), {keys.messages} (a conversation) or "
        f"{keys.prompt} (prompts); rename fields with --keys.prompt-key, --keys.chosen-key, ...",
    )


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH-RLHF transcripts into (prompt, chosen response, rejected response).

    The prompt is the longest shared start of both texts, cut back to end with its last "\\n\\nAssistant:".
    When the texts diverge only in the final assistant turn (the usual case) this is exactly the chosen
    text up to its last "\\n\\nAssistant:". A few HH rows diverge earlier; there the prompt ends at the
    last assistant turn both share and the responses span the remaining turns (no row is dropped).
    Raises `ValueError` when the texts share no assistant turn.
    """
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT_MARKER)
    if cut < 0:
        raise ValueError(
            "chosen and rejected share no '\\n\\nAssistant:' turn, so the prompt cannot be split off; "
            "add an explicit prompt field (or pass --keys.prompt-key NAME)"
        )
    end = cut + len(ASSISTANT_MARKER)
    return chosen[:end], chosen[end:], rejected[end:]


def _field(path, line: int, row: dict, key: str, keys: ColumnKeys) -> Any:
    if key not in row:
        raise DataError(
            path,
            line,
            f"missing field {key!r} (found: {', '.join(row)}); {_rename_hint(keys, key, list(row))}",
        )
    return row[key]


def _text(
    path: str | Path, line: int, row: dict, key: str, keys: ColumnKeys, allow_empty: bool = False
) -> str:
    """Field `key` of `row` as a string; raises a DataError naming the fix if it is missing, not text, or empty."""
    value = _field(path, line, row, key, keys)
    if not isinstance(value, str):
        hint = "store the text as a string"
        if isinstance(value, list):
            hint = (
                "the first row holds text here, so every row must; write conversations in every row or none"
            )
        raise DataError(path, line, f"field {key!r} is {describe(value)}, expected a string; {hint}")
    if not allow_empty and not value.strip():
        raise DataError(path, line, f"field {key!r} is empty; fill it in or remove the row")
    return value


def _messages(path, line: int, row: dict, key: str, keys: ColumnKeys) -> list[dict]:
    return check_messages(path, line, _field(path, line, row, key, keys), key)


def _margin(path: str | Path, line: int, row: dict, key: str) -> float | None:
    """Optional numeric field `key`: None when absent, null or (in CSV) an empty cell."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):  # CSV cells are always text
        try:
            value = float(value)
        except ValueError:
            raise DataError(
                path, line, f"field {key!r} is {value!r}, expected a number like 1.5; fix or clear it"
            ) from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(
            path, line, f"field {key!r} is {describe(value)}, expected a number like 1.5; fix or remove it"
        )
    if not math.isfinite(value):
        raise DataError(path, line, f"field {key!r} is {value}, expected a finite number; fix or remove it")
    return float(value)


# --------------------------------------------------------------------------------------- one row -> example


def to_pair(path, line: int, row: dict, keys: ColumnKeys, schema: str) -> Pair:
    """The preference pair in one row of a pair schema."""
    if schema not in PAIR_SCHEMAS:
        raise DataError(
            path,
            None,
            f"this is a {schema!r} file, but preference pairs are needed: fields {keys.prompt}, {keys.chosen}, "
            f"{keys.rejected} (or whole transcripts / conversations in {keys.chosen}, {keys.rejected}); "
            "rename with --keys.chosen-key/--keys.rejected-key",
        )
    margin = _margin(path, line, row, keys.margin)
    if schema == "chat_pairs":
        prompt = _messages(path, line, row, keys.prompt, keys)
        chosen = _messages(path, line, row, keys.chosen, keys)
        rejected = _messages(path, line, row, keys.rejected, keys)
        ends_with_assistant(path, line, chosen, keys.chosen)
        ends_with_assistant(path, line, rejected, keys.rejected)
        return Pair(prompt, chosen, rejected, margin, line)
    if schema == "chat_pairs_implicit":
        chosen = _messages(path, line, row, keys.chosen, keys)
        rejected = _messages(path, line, row, keys.rejected, keys)
        return Pair(*split_implicit(path, line, chosen, rejected), margin, line)
    chosen = _text(path, line, row, keys.chosen, keys)
    rejected = _text(path, line, row, keys.rejected, keys)
    if schema == "pairs":
        return Pair(
            _text(path, line, row, keys.prompt, keys, allow_empty=True), chosen, rejected, margin, line
        )
    try:
        prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
    except ValueError as e:
        raise DataError(path, line, str(e)) from None
    # HH rows where the preferred answer is silence are real data, but two silent answers are not a pair.
    if not chosen.strip() and not rejected.strip():
        raise DataError(
            path, line, "chosen and rejected responses are both empty after the prompt; fix or remove the row"
        )
    return Pair(prompt, chosen, rejected, margin, line)


def to_sft(path, line: int, row: dict, keys: ColumnKeys, schema: str) -> SFTExample:
    """The SFT example in one row: prompt + response, a conversation, or prompt + chosen of a pair."""
    if schema in PAIR_SCHEMAS:
        p = to_pair(path, line, row, keys, schema)
        return SFTExample(p.prompt, p.chosen, line)
    if schema in ("prompts", "chat_prompts"):
        raise DataError(
            path,
            None,
            f"this file has prompts only, but SFT needs responses: add a {keys.response!r} or "
            f"{keys.completion!r} field (or {keys.chosen!r}+{keys.rejected!r}), or pass --keys.response-key NAME",
        )
    if schema == "messages":
        messages = _messages(path, line, row, keys.messages, keys)
        return SFTExample(*split_at_first_answer(path, line, messages, keys.messages), line)
    key = keys.response if keys.response in row else keys.completion
    if schema == "chat_sft":
        completion = _messages(path, line, row, key, keys)
        ends_with_assistant(path, line, completion, key)
        return SFTExample(_messages(path, line, row, keys.prompt, keys), completion, line)
    return SFTExample(
        _text(path, line, row, keys.prompt, keys, allow_empty=True), _text(path, line, row, key, keys), line
    )


def to_prompt(path, line: int, row: dict, keys: ColumnKeys, schema: str) -> Text:
    """The prompt of one row of any schema (pairs without one give their split-off prompt)."""
    if schema in ("pairs_implicit", "chat_pairs_implicit"):
        return to_pair(path, line, row, keys, schema).prompt
    if schema == "messages":
        messages = _messages(path, line, row, keys.messages, keys)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        if last == 0:
            raise DataError(path, line, f"field {keys.messages!r} has no turn before its first answer")
        return messages[:last]
    if is_chat(schema):
        return _messages(path, line, row, keys.prompt, keys)
    # Generation from an empty prompt is meaningless, so unlike SFT/pair files prompts must not be blank here.
    return _text(path, line, row, keys.prompt, keys)


CONVERT = {"pairs": to_pair, "sft": to_sft, "prompts": to_prompt}


# ----------------------------------------------------------------------------------------- files -> examples


def schema_of(path: str | Path, keys: ColumnKeys = DEFAULT_KEYS, split: str = "") -> str:
    """The schema of a file or directory, from its first row (nothing more is read)."""
    source = shards(path, split)[0]
    return detect_schema([next(iter_rows(source, split))], keys, source)


def iter_records(
    path: str | Path, keys: ColumnKeys = DEFAULT_KEYS, split: str = ""
) -> Iterator[tuple[Path, int, dict, str]]:
    """(source, location, row, schema) for every row behind `path`, streaming shard by shard.

    All shards of a directory must follow one schema; the first row of the first shard decides it."""
    schema, first = None, None
    for source in shards(path, split):
        rows = iter_rows(source, split)
        head = next(rows)
        shard_schema = detect_schema([head], keys, source)
        if schema is None:
            schema, first = shard_schema, source
        elif shard_schema != schema:
            raise DataError(
                source,
                None,
                f"is a {shard_schema!r} shard but {first} is {schema!r}; one dataset, one schema",
            )
        yield source, head[0], head[1], schema
        for line, row in rows:
            yield source, line, row, schema


def iter_examples(
    path: str | Path, kind: str, keys: ColumnKeys = DEFAULT_KEYS, split: str = ""
) -> Iterator[Pair | SFTExample | Text]:
    """Examples of `kind` ('pairs', 'sft', 'prompts') from a file or directory, streaming."""
    convert = CONVERT[kind]
    for source, line, row, schema in iter_records(path, keys, split):
        yield convert(source, line, row, keys, schema)


def load_pairs(path: str | Path, keys: ColumnKeys = DEFAULT_KEYS, split: str = "") -> list[Pair]:
    """Preference pairs (explicit or implicit prompt, text or conversations) for reward models and DPO."""
    return list(iter_examples(path, "pairs", keys, split))


def load_sft(path: str | Path, keys: ColumnKeys = DEFAULT_KEYS, split: str = "") -> list[SFTExample]:
    """SFT examples; a pairs file is accepted and trains on its chosen responses."""
    return list(iter_examples(path, "sft", keys, split))


def load_prompts(path: str | Path, keys: ColumnKeys = DEFAULT_KEYS, split: str = "") -> list[Text]:
    """Prompts for RL rollouts and comparisons, from a file of any schema."""
    return list(iter_examples(path, "prompts", keys, split))


def load_prompt_table(
    path: str | Path, keys: ColumnKeys = DEFAULT_KEYS, split: str = ""
) -> tuple[list[Text], dict[str, list]]:
    """Prompts as `load_prompts` returns them, plus every other column of the file, for reward functions.

    The columns map each field name (the prompt field excluded) to one value per prompt, in file order; a
    row without a field that other rows have gets None there. Values are as stored: CSV cells are strings.
    Files of whole transcripts or conversations have no per-prompt columns (their fields are the
    transcripts), so they give an empty dict.
    """
    prompts, rows, schema = [], [], None
    for source, line, row, schema in iter_records(path, keys, split):
        prompts.append(to_prompt(source, line, row, keys, schema))
        rows.append(row)
    if schema in ("pairs_implicit", "chat_pairs_implicit", "messages"):
        return prompts, {}
    # dict.fromkeys keeps first-seen order, so columns come out in the order the file introduces them.
    names = dict.fromkeys(name for row in rows for name in row if name != keys.prompt)
    return prompts, {name: [row.get(name) for row in rows] for name in names}


# ------------------------------------------------------------------------------------------------ mixtures


def load_mixture(
    paths: Sequence[str | Path],
    kind: str,
    keys: ColumnKeys = DEFAULT_KEYS,
    weights: Sequence[float] = (),
    seed: int = 0,
    split: str = "",
    eval_fraction: float | None = None,
) -> tuple[list, list]:
    """(train, held out) examples of `kind` from several files, each file sampled at its weight's share of the
    training mixture (OpenRLHF's dataset probabilities).

    With `eval_fraction` each file is shuffled (seeded) and first gives up that share of its examples to the
    held-out set (unweighted), so up-weighting never puts copies of one example on both sides; without it the
    examples stay in file order and nothing is held out. Without weights the training set is every
    remaining example once. With weights w_i it has as many examples as the files' remaining examples together
    (N), file i giving round(N * w_i / sum(w)): drawn without replacement while the file has enough, whole copies
    plus a draw without replacement beyond that. Files whose examples a stage cannot use together (text and
    conversations, or a prompts file in an SFT mixture) are an error naming both.
    """
    if weights and len(weights) != len(paths):
        raise UserError(
            f"--data-weights has {len(weights)} value(s) but --data names {len(paths)} file(s); give one weight "
            "per file"
        )
    if any(not (math.isfinite(w) and w > 0) for w in weights):
        raise UserError(f"--data-weights must all be positive numbers, got {list(weights)}")
    schemas = [schema_of(p, keys, split) for p in paths]
    readable = {"pairs": PAIR_SCHEMAS, "sft": [s for s in SCHEMAS if s not in ("prompts", "chat_prompts")]}
    good = next(((q, t) for q, t in zip(paths, schemas) if t in readable.get(kind, SCHEMAS)), None)
    for p, s in zip(paths, schemas):
        if len(paths) > 1 and good and s not in readable.get(kind, SCHEMAS):
            raise UserError(
                f"{p} is a {s!r} file but {good[0]} is {good[1]!r}: a {kind} mixture cannot use {s!r} rows; "
                f"drop {p} or convert it"
            )
    for p, s in zip(paths[1:], schemas[1:]):
        if is_chat(s) != is_chat(schemas[0]):
            kinds = {True: "conversations (messages)", False: "plain text"}
            raise UserError(
                f"{paths[0]} holds {kinds[is_chat(schemas[0])]} ({schemas[0]}) but {p} holds "
                f"{kinds[is_chat(s)]} ({s}); a stage trains on one layout - convert one of them"
            )
    gen = torch.Generator().manual_seed(seed)
    parts, held_out = [], []
    for p in paths:
        examples = list(iter_examples(p, kind, keys, split))
        if eval_fraction is None:
            order, n_eval = range(len(examples)), 0
        else:
            order = torch.randperm(len(examples), generator=gen).tolist()
            n_eval = int(round(len(examples) * eval_fraction)) if len(examples) > 1 else 0
        held_out += [examples[i] for i in order[:n_eval]]
        parts.append([examples[i] for i in order[n_eval:]])
    if not weights:
        return [e for part in parts for e in part], held_out
    total, wsum = sum(len(part) for part in parts), sum(weights)
    mixed = []
    for part, w in zip(parts, weights):
        want = round(total * w / wsum)
        copies, rest = divmod(want, len(part))
        mixed += part * copies + [part[i] for i in torch.randperm(len(part), generator=gen)[:rest].tolist()]
    return mixed, held_out
