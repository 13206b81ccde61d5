"""The built-in synthetic instruction task: prompts, mixed-quality demonstrations and preference pairs.

Six prompt families (`facts.FAMILIES`: echo, upper, compare, successor, capital, items) with short
fixed-format prompts such as "Q: Uppercase: lantern\nA:" and short answers such as " LANTERN.". Most
answers are copied or computed from the prompt, so a tiny byte-level model can learn them in a minute of
CPU and answer held-out prompts too. Responses come in styles (`STYLES`): concise (the ideal), padded
(filler around the answer), hedging, wrong, repetitive and empty (bare punctuation). The gold judge
(`judge.py`) scores them; SFT data mixes styles so that an SFT model is mediocre and PPO has room to
improve.

Splits are fixed, independent of the seed, so every seed evaluates on the same held-out prompts, and no
test prompt string occurs in training. Where the answer is computed, the test split holds out inputs:
20% of the words (for echo and upper alike), of the unordered digit pairs (compare) and of the numbers
(successor), under both templates. The memorised families (capital, items) hold out 20% of their prompt
strings, at most one template per fact, so each test fact is taught under the other template.
All sampling is deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from rlhf.tasks import judge
from rlhf.tasks.facts import (
    CAPITALS,
    CATEGORIES,
    DIGITS,
    FAMILIES,
    ITEM_COUNTS,
    NUMBERS,
    TEMPLATES,
    WORDS,
    Spec,
    answer_text,
    parse_prompt,
)

STYLES = ("concise", "padded", "hedging", "wrong", "repetitive", "empty")
DEFAULT_STYLE_MIX = {"concise": 0.35, "padded": 0.25, "hedging": 0.15, "wrong": 0.15, "repetitive": 0.10}
SPLITS = ("train", "test")
TEST_FRACTION = 0.2

_OPENERS = ("Sure!", "Of course!", "Certainly!", "Great question!")
_CLOSERS = ("Hope this helps!", "Happy to help!", "Glad to help!")
# Each hedge template holds two hedging phrases, so a hedged answer costs the full hedge penalty.
_HEDGES = (
    "I think {x}, but I am not sure.",
    "Maybe {x}? I am not sure.",
    "Perhaps {x}, but I could be wrong.",
)
_JUNK = (" .", " ...", " ?", " -")  # no letter or digit: never an empty string, which data loaders may reject
_MAX_PAIR_TRIES = 100


class InstructTask:
    """Synthetic instruction task with a programmatic gold judge.

    `label_noise` is the probability that a preference label is flipped. `length_bias` >= 0 models an
    annotator who likes longer answers: the annotator prefers the response with the higher
    `gold + length_bias * len_bytes / 100` (so at length_bias 1, 50 extra bytes are worth +0.5 gold),
    deterministically; then the label is flipped with probability `label_noise`. With both 0 the chosen
    response always has the higher gold score. `style_mix` maps styles to SFT sampling weights.
    """

    name = "instruct"

    def __init__(
        self,
        seed: int = 0,
        label_noise: float = 0.1,
        length_bias: float = 0.0,
        style_mix: dict[str, float] | None = None,
    ):
        if not 0.0 <= label_noise <= 1.0:
            raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
        if length_bias < 0:
            raise ValueError(f"length_bias must be >= 0, got {length_bias}")
        self.seed, self.label_noise, self.length_bias = seed, label_noise, length_bias
        self.style_mix = _normalised_mix(DEFAULT_STYLE_MIX if style_mix is None else style_mix)

    def prompts(self, n: int, split: str = "train") -> list[str]:
        """`n` prompts from `split`, families equally likely."""
        rng = self._rng("prompts", split)
        return [_sample_prompt(rng, split) for _ in range(n)]

    def response(self, prompt: str, style: str, rng: random.Random | None = None) -> str:
        """A response to `prompt` in `style` (one of `STYLES`); `rng` picks among the variants."""
        if style not in _BUILDERS:
            raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
        return _BUILDERS[style](parse_prompt(prompt), rng or random.Random(0))

    def sft_examples(self, n: int, split: str = "train") -> list[dict]:
        """`n` demonstrations {prompt, response, style} whose styles follow `style_mix`."""
        rng = self._rng("sft", split)
        styles, weights = zip(*self.style_mix.items())
        out = []
        for _ in range(n):
            prompt = _sample_prompt(rng, split)
            style = rng.choices(styles, weights)[0]
            out.append({"prompt": prompt, "response": self.response(prompt, style, rng), "style": style})
        return out

    def preference_pairs(self, n: int, split: str = "train") -> list[dict]:
        """`n` labelled pairs: two responses to one prompt, styles drawn uniformly from `STYLES`.

        Keys: prompt, chosen, rejected, gold_chosen, gold_rejected, chosen_style, rejected_style and
        clean_chosen_is_better (whether the gold judge agrees with the label after bias and noise).
        """
        rng = self._rng("pairs", split)
        return [self._pair(rng, _sample_prompt(rng, split)) for _ in range(n)]

    def score(self, prompt: str, response: str, finished: bool = True) -> float:
        """Gold score in [-1, 1] (see `judge.score`)."""
        return judge.score(prompt, response, finished)

    def components(self, prompt: str, response: str, finished: bool = True) -> dict[str, float]:
        """Gold score parts (see `judge.components`)."""
        return judge.components(prompt, response, finished)

    def _rng(self, purpose: str, split: str) -> random.Random:
        # One independent stream per (seed, purpose, split): asking for more data extends, never reshuffles.
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return random.Random(f"instruct:{self.seed}:{purpose}:{split}")

    def _pair(self, rng: random.Random, prompt: str) -> dict:
        for _ in range(_MAX_PAIR_TRIES):
            style_a, style_b = rng.choice(STYLES), rng.choice(STYLES)
            a, b = self.response(prompt, style_a, rng), self.response(prompt, style_b, rng)
            gold_a, gold_b = judge.score(prompt, a), judge.score(prompt, b)
            if gold_a != gold_b:  # a tie teaches nothing about which is better
                break
        else:
            raise RuntimeError(f"no pair with distinct gold scores for {prompt!r}")
        a_first = self._annotate(a, gold_a, b, gold_b)
        if rng.random() < self.label_noise:
            a_first = not a_first
        if not a_first:
            a, gold_a, style_a, b, gold_b, style_b = b, gold_b, style_b, a, gold_a, style_a
        return {
            "prompt": prompt,
            "chosen": a,
            "rejected": b,
            "clean_chosen_is_better": gold_a > gold_b,
            "gold_chosen": gold_a,
            "gold_rejected": gold_b,
            "chosen_style": style_a,
            "rejected_style": style_b,
        }

    def _annotate(self, a: str, gold_a: float, b: str, gold_b: float) -> bool:
        """Whether the (length-biased, noise-free) annotator prefers `a`; ties fall back to gold."""
        bias = self.length_bias * (len(a.encode()) - len(b.encode())) / 100
        utility = gold_a - gold_b + bias
        return utility > 0 if utility != 0 else gold_a > gold_b


def _normalised_mix(mix: dict[str, float]) -> dict[str, float]:
    unknown = set(mix) - set(STYLES)
    if unknown:
        raise ValueError(f"unknown styles {sorted(unknown)} in style_mix; known: {', '.join(STYLES)}")
    if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"style_mix weights must be >= 0 with a positive sum, got {mix}")
    total = sum(mix.values())
    return {s: w / total for s, w in mix.items() if w > 0}


# --- prompts and splits ---


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _holdout(keys: list[str]) -> set[str]:
    """The TEST_FRACTION of `keys` with the smallest hashes: a fixed split of exactly that size."""
    return set(sorted(keys, key=_stable_hash)[: round(len(keys) * TEST_FRACTION)])


def _split_by(keyed: dict[str, list[str]], held: set[str]) -> dict[str, list[str]]:
    """Split prompts grouped by key: all prompts of a key in `held` go to test, the others to train."""
    return {
        "train": [p for k, ps in keyed.items() if k not in held for p in ps],
        "test": [p for k, ps in keyed.items() if k in held for p in ps],
    }


def _split_prompts(by_fact: dict[str, list[str]]) -> dict[str, list[str]]:
    """Hold out TEST_FRACTION of the prompt strings by hash, at most one per fact (so train keeps each fact)."""
    prompts = sorted((p for ps in by_fact.values() for p in ps), key=_stable_hash)
    fact_of = {p: fact for fact, ps in by_fact.items() for p in ps}
    want, held, held_facts = round(len(prompts) * TEST_FRACTION), set(), set()
    for p in prompts:
        if len(held) < want and fact_of[p] not in held_facts:
            held.add(p)
            held_facts.add(fact_of[p])
    return {"train": [p for p in prompts if p not in held], "test": [p for p in prompts if p in held]}


def _fill(family: str, **fields) -> list[str]:
    return [t.format(**fields) for t in TEMPLATES[family]]


def _build_pools() -> dict[str, dict[str, list[str]]]:
    """split -> family -> prompt strings."""
    held_words = _holdout(list(WORDS))
    pairs = {f"{a}{b}": (a, b) for a in DIGITS for b in DIGITS if a < b}
    by_family = {
        "echo": _split_by({w: _fill("echo", word=w) for w in WORDS}, held_words),
        "upper": _split_by({w: _fill("upper", word=w) for w in WORDS}, held_words),
        "compare": _split_by(
            {k: _fill("compare", a=a, b=b) + _fill("compare", a=b, b=a) for k, (a, b) in pairs.items()},
            _holdout(list(pairs)),
        ),
        "successor": _split_by(
            {str(n): _fill("successor", n=n) for n in NUMBERS}, _holdout([str(n) for n in NUMBERS])
        ),
        "capital": _split_prompts({c: _fill("capital", country=c) for c in CAPITALS}),
        "items": _split_prompts(
            {f"{n} {c}": _fill("items", n=n, category=c) for c in CATEGORIES for n in ITEM_COUNTS}
        ),
    }
    return {split: {f: by_family[f][split] for f in FAMILIES} for split in SPLITS}


_POOLS = _build_pools()


def _sample_prompt(rng: random.Random, split: str) -> str:
    return rng.choice(_POOLS[split][rng.choice(FAMILIES)])


# --- response styles ---


def _correct_core(spec: Spec, rng: random.Random) -> str:
    """The bare answer: "lantern", "LANTERN", "8", "Paris", "red, blue, green" (the first n members)."""
    return answer_text(spec)


def _wrong_core(spec: Spec, rng: random.Random) -> str:
    """A plausible bare answer that the judge grades wrong."""
    if spec.family == "echo":
        return rng.choice([w for w in WORDS if w != spec.key])
    if spec.family == "upper":  # left in lowercase, or another word
        return rng.choice([spec.key, rng.choice([w for w in WORDS if w != spec.key]).upper()])
    if spec.family == "compare":  # the smaller of the two digits
        return str(spec.n)
    if spec.family == "successor":  # the number itself, or two more
        return str(int(spec.key) + rng.choice([-1, 1]))
    if spec.family == "capital":
        return rng.choice([c for c in CAPITALS.values() if c != spec.key])
    return ", ".join(_wrong_items(spec, rng))


def _wrong_items(spec: Spec, rng: random.Random) -> list[str]:
    """One too many, one too few (when that leaves at least two), or the last one from another category."""
    members = CATEGORIES[spec.key]
    kinds = ["too_many", "foreign"] + (["too_few"] if spec.n > 2 else [])
    kind = rng.choice(kinds)
    if kind == "too_many":
        return list(members[: spec.n + 1])
    if kind == "too_few":
        return list(members[: spec.n - 1])
    other = rng.choice([c for c in CATEGORIES if c != spec.key])
    return list(members[: spec.n - 1]) + [rng.choice(CATEGORIES[other])]


def _sentence(spec: Spec, core: str) -> str:
    """The answer as a full sentence, as a chatty assistant would phrase it."""
    if spec.family == "capital":
        return f"The capital is {core}."
    if spec.family == "items":
        return f"{core[0].upper()}{core[1:]}."
    return f"The answer is {core}."


def _embedded(spec: Spec, core: str) -> str:
    """The answer as a clause inside a hedge: "it is 7", "red, blue"."""
    return core if spec.family == "items" else f"it is {core}"


def _concise(spec: Spec, rng: random.Random) -> str:
    return f" {_correct_core(spec, rng)}."


def _padded(spec: Spec, rng: random.Random) -> str:
    return f" {rng.choice(_OPENERS)} {_sentence(spec, _correct_core(spec, rng))} {rng.choice(_CLOSERS)}"


def _hedging(spec: Spec, rng: random.Random) -> str:
    return " " + rng.choice(_HEDGES).format(x=_embedded(spec, _correct_core(spec, rng)))


def _wrong(spec: Spec, rng: random.Random) -> str:
    return f" {_wrong_core(spec, rng)}."


def _repetitive(spec: Spec, rng: random.Random) -> str:
    once = f"{_correct_core(spec, rng)}."
    times = 3 if len(once) <= 20 else 2  # keeps prompt + response under 100 bytes
    return " " + " ".join([once] * times)


def _empty(spec: Spec, rng: random.Random) -> str:
    return rng.choice(_JUNK)


_BUILDERS: dict[str, Callable[[Spec, random.Random], str]] = {
    "concise": _concise,
    "padded": _padded,
    "hedging": _hedging,
    "wrong": _wrong,
    "repetitive": _repetitive,
    "empty": _empty,
}
