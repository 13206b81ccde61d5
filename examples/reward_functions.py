"""Example reward functions for `rlhf grpo` / `rlhf rloo` / `rlhf ppo --reward-fn FILE.py:FUNCTION`.

prompts_with_answers.jsonl (next to this file) holds 200 prompts of the built-in task's train split (seed 0)
with their ideal answers, written from `InstructTask.prompts` and `InstructTask.prompt_columns`.

Usage, on the built-in task (its prompts come with an `answer` column) or on a prompt file with one:

    rlhf grpo --sft runs/demo/sft --reward-fn examples/reward_functions.py:exact_match --out runs/grpo-fn
    rlhf grpo --sft runs/demo/sft --prompts examples/prompts_with_answers.jsonl \\
        --reward-fn examples/reward_functions.py:exact_match --out runs/grpo-fn

The convention (the same as TRL's GRPOTrainer reward functions): a reward function is called once per batch
as `fn(prompts, completions, **columns)`, where `prompts` and `completions` are lists of strings of the same
length and `columns` holds the prompt file's other columns, one value per prompt (e.g. `answer=[...]`). It
returns one number per completion: a list of floats (or a 1-D tensor or array); higher is better. Name the
columns a function needs as parameters and end with `**kwargs`, so that columns it does not use are
ignored. Any exception it raises stops training with a one-line error naming the function and the prompt.

This file is plain Python with no imports from rlhf, so it can be copied and edited freely. To reward both
correctness and format, combine the two in a function of your own, e.g.

    def correct_and_concise(prompts, completions, answer, **kwargs):
        correct = exact_match(prompts, completions, answer)
        form = concise_format(prompts, completions)
        return [c + 0.5 * f for c, f in zip(correct, form)]
"""

from __future__ import annotations

import re

# Punctuation that may surround an answer without changing it: " Paris." and "Paris" are the same answer.
_EDGE_PUNCTUATION = " \t\n.,;:!?\"'"


def _normalise(text: str) -> str:
    """Whitespace runs collapsed to one space, surrounding punctuation dropped; case is kept."""
    return " ".join(text.split()).strip(_EDGE_PUNCTUATION)


def exact_match(prompts: list[str], completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """1.0 where the completion is the reference `answer`, else 0.0: a verifiable reward, no model needed.

    Both sides are compared after collapsing whitespace and stripping surrounding punctuation, so
    " Paris." matches "Paris" but "Paris, I think." does not. The comparison is case-sensitive: some tasks
    ask for a particular case (the built-in task's "Type it in caps: kel" wants "KEL", not "kel").
    Anything added to the answer - politeness, hedging, a second sentence - makes it a mismatch.
    """
    return [
        1.0 if _normalise(completion) == _normalise(str(reference)) else 0.0
        for completion, reference in zip(completions, answer)
    ]


MAX_WORDS = 8
# Phrases that add nothing to an answer. Longer phrases come first in the pattern, so "not sure" is one
# hedge and not also the filler "sure".
_FILLER = (
    "i am not sure",
    "not sure",
    "i think",
    "i guess",
    "i believe",
    "maybe",
    "perhaps",
    "probably",
    "hope this helps",
    "glad to help",
    "happy to help",
    "let me know",
    "great question",
    "of course",
    "certainly",
    "sure",
)
_FILLER_RE = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in _FILLER) + r")\b")
_WORD_RE = re.compile(r"[a-z0-9']+")
_SENTENCE_END_RE = re.compile(r"[.!?]+(?:\s+|$)")


def concise_format(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """A format-only reward in [-1, 1]: a short single sentence without filler, hedging or repetition.

    It does not check whether the answer is right - a concise wrong answer scores 1.0 - so use it next to a
    correctness reward, not instead of one. Starting from 1.0, it subtracts:

    - 0.1 per word beyond MAX_WORDS (8);
    - 0.25 per sentence beyond the first;
    - 0.25 per filler or hedging phrase ("sure", "hope this helps", "I think", "maybe", ...);
    - 0.25 per repeated word (case-insensitive) - a model that found a rewarded word tends to say it again.

    A completion without a single letter or digit scores -1.0.
    """
    return [_concise_score(completion) for completion in completions]


def _concise_score(completion: str) -> float:
    text = completion.lower()
    words = _WORD_RE.findall(text)
    if not words:
        return -1.0
    sentences = [s for s in _SENTENCE_END_RE.split(text) if _WORD_RE.search(s)]
    score = 1.0
    score -= 0.1 * max(0, len(words) - MAX_WORDS)
    score -= 0.25 * max(0, len(sentences) - 1)
    score -= 0.25 * len(_FILLER_RE.findall(text))
    score -= 0.25 * (len(words) - len(set(words)))
    return max(-1.0, min(1.0, score))
