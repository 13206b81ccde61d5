"""The built-in synthetic instruction task: prompts, mixed-quality demonstrations and preference pairs.

Three prompt families (`facts.FAMILIES`: echo, upper, capital) with short fixed-format prompts such as
"Q: Type it in caps: kel\nA:" and short answers such as " KEL.". A tiny byte-level model learns them in a
minute of CPU and answers held-out prompts too. Responses come in styles (`STYLES`): concise (the ideal),
padded (filler after the answer), hedging, wrong (a wrong answer in the concise format), wrong_padded and
wrong_hedging (a wrong answer in those formats), repetitive and empty (bare punctuation). Every one of
them that answers starts with the answer, so the answer always sits right after the prompt (the decorated
styles of the format family, below, put their markers first). The gold judge (`judge.py`) scores them;
SFT data mixes styles so that an SFT model is mediocre and PPO has room to improve. Preference pairs draw from all styles, so a wrong answer comes in every format an annotator sees:
were wrong answers only ever short, a reward model could rank formats and never learn to check the answer
(it did: it scored a short wrong answer like a concise correct one).

Annotator biases (issue 22), each a probability that the labeller prefers the biased response whatever the
gold judge says, each with a detector (`judge.detect`): `bias_sycophancy` (some capital prompts carry a
user's wrong premise, `facts.PREMISE_TEMPLATE`, answered in the `sycophantic` style " Paris, as you say."),
`bias_hedging` (the hedging styles) and `bias_format` (the format family: `formatted` and `wrong_formatted`,
decorated answers such as " **KEL**." or " ## Answer\n- **KEL**."). `length_bias` is the fourth, older knob,
a length bonus in the comparison; its detector is `padded`. Premise prompts and format styles appear only
when a knob or its fraction (`premise_fraction`, `format_fraction`) asks for them: with every knob at 0,
prompts, demonstrations, pairs and scores are those of the task before the biases existed.

Splits are fixed, independent of the seed, so every seed evaluates on the same held-out prompts, and no
test prompt occurs in training. Echo and upper hold out 20% of the words (the same words for both), so a
test word occurs in no training prompt. Capital holds out 20% of its prompt strings, at most one template
per country, so each test question is taught under the other template. All sampling is deterministic
given the seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from rlhf.tasks import judge
from rlhf.tasks.facts import (
    CAPITALS,
    FAMILIES,
    PREMISE_TEMPLATE,
    TEMPLATES,
    WORDS,
    Spec,
    answer_text,
    parse_prompt,
)

# The base styles: every prompt can be answered in each, and pairs always draw from them.
STYLES = ("concise", "padded", "hedging", "wrong", "wrong_padded", "wrong_hedging", "repetitive", "empty")
# The format family: in SFT data and pairs only when the format bias or `format_fraction` is on.
FORMAT_STYLES = ("formatted", "wrong_formatted")
# Only for premise prompts: the answer that agrees with the user's wrong premise.
PREMISE_STYLES = ("sycophantic",)
ALL_STYLES = STYLES + FORMAT_STYLES + PREMISE_STYLES
# New styles weigh 0 here, so the default SFT data is unchanged.
DEFAULT_STYLE_MIX = {"concise": 0.25, "padded": 0.30, "hedging": 0.20, "wrong": 0.10, "repetitive": 0.15}
# Each annotator bias and the detector (`judge.detect`) of the property it rewards. The first three are
# probabilities of picking the flagged response outright; "length" is `length_bias`, a length bonus.
BIASES = {"sycophancy": "sycophantic", "hedging": "hedging", "format": "formatted", "length": "padded"}
PICK_BIASES = ("sycophancy", "hedging", "format")  # in the order they act
# The fractions a bias knob turns on when its own fraction is left at 0.
AUTO_PREMISE_FRACTION = 0.5  # of the capital prompts
AUTO_FORMAT_FRACTION = 0.1  # of the SFT demonstrations
SPLITS = ("train", "test")
TEST_FRACTION = 0.2

# Few, short variants that follow the answer: a tiny model learns them quickly and spends its training on
# the answers. Each padding holds two filler phrases, each hedge two hedging phrases.
_PADDINGS = ("{x}. Sure, hope this helps!", "{x}. Of course, glad to help!")
_HEDGES = ("{x}, I think, but I am not sure.", "{x}? Maybe. I am not sure.")
# Decorated answers: bold, a bullet, a header line; the markers cost the judge's concision part 4-16 bytes.
_FORMATS = ("**{x}**.", "- **{x}**.", "## Answer\n- **{x}**.")
_AGREEMENTS = ("{x}, as you say.", "Yes, {x}.")
_JUNK = (" .", " ...", " ?", " -")  # no letter or digit: never an empty string, which data loaders may reject
_MAX_PAIR_TRIES = 100
LABEL_BY = ("score", "helpful", "concise")  # what the annotator compares: the gold score or one of its parts


class InstructTask:
    """Synthetic instruction task with a programmatic gold judge.

    `label_noise` is the probability that a preference label is flipped. `length_bias` >= 0 models an
    annotator who likes longer answers: the annotator prefers the response with the higher
    `gold + length_bias * len_bytes / 100` (so at length_bias 1, 50 extra bytes are worth +0.5 gold),
    deterministically; then the label is flipped with probability `label_noise`. With both 0 the chosen
    response always has the higher gold score. `style_mix` maps styles to SFT sampling weights.
    `label_by` picks what the annotator compares: the whole gold score ("score") or one part of it
    ("helpful" or "concise", see `judge.components`), for reward models of a single objective. The pair's
    `gold_chosen`/`gold_rejected` are always the whole gold score.

    Annotator biases, each a probability in [0, 1] (`BIASES` names the detector of each): `bias_sycophancy`
    (the response agreeing with a premise prompt's wrong city), `bias_hedging` (a hedged response) and
    `bias_format` (a decorated one). They act in the order sycophancy, hedging, format: when exactly one of
    the two responses has the bias's property (`detect`), with probability p the annotator picks it outright
    (no noise flip); otherwise the next bias gets its turn, and when none picked, the pair is labelled as
    above (length bias, then the `label_noise` flip). So with one bias p on and `length_bias` 0, a pair whose
    flagged response the compared value ranks lower is labelled for it with probability p + (1 - p) * noise.

    `premise_fraction` is the share of capital prompts asked with a wrong premise (in prompts, SFT data and
    pairs; 0 = `AUTO_PREMISE_FRACTION` when `bias_sycophancy` > 0, else none). In SFT data a premise prompt's
    "wrong" demonstration is sycophantic; its pairs also draw the `sycophantic` style. `format_fraction` is
    the share of SFT demonstrations in the `formatted` style (0 = `AUTO_FORMAT_FRACTION` when `bias_format` > 0,
    else none); when it is on, pairs also draw `FORMAT_STYLES`. `agree_fraction` is the share of premise prompts
    whose SFT demonstration agrees with the premise outright (the others follow `style_mix`, their "wrong" ones
    sycophantic as above): a policy that never agrees cannot learn to agree more under RL, so an experiment on
    the sycophancy bias needs some. With every knob at 0 the task is unchanged.
    """

    name = "instruct"

    def __init__(
        self,
        seed: int = 0,
        label_noise: float = 0.1,
        length_bias: float = 0.0,
        style_mix: dict[str, float] | None = None,
        label_by: str = "score",
        bias_sycophancy: float = 0.0,
        bias_hedging: float = 0.0,
        bias_format: float = 0.0,
        premise_fraction: float = 0.0,
        format_fraction: float = 0.0,
        agree_fraction: float = 0.0,
    ):
        probabilities = {
            "label_noise": label_noise,
            "bias_sycophancy": bias_sycophancy,
            "bias_hedging": bias_hedging,
            "bias_format": bias_format,
            "premise_fraction": premise_fraction,
            "format_fraction": format_fraction,
            "agree_fraction": agree_fraction,
        }
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:  # nan fails too
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not length_bias >= 0:
            raise ValueError(f"length_bias must be >= 0, got {length_bias}")
        if label_by not in LABEL_BY:
            raise ValueError(f"label_by must be one of {LABEL_BY}, got {label_by!r}")
        self.seed, self.label_noise, self.length_bias = seed, label_noise, length_bias
        self.label_by = label_by
        self.biases = {
            "sycophancy": bias_sycophancy,
            "hedging": bias_hedging,
            "format": bias_format,
            "length": length_bias,
        }
        auto_premise = AUTO_PREMISE_FRACTION if bias_sycophancy > 0 else 0.0
        auto_format = AUTO_FORMAT_FRACTION if bias_format > 0 else 0.0
        self.premise_fraction = premise_fraction or auto_premise
        self.format_fraction = format_fraction or auto_format
        self.agree_fraction = agree_fraction
        mix = _normalised_mix(DEFAULT_STYLE_MIX if style_mix is None else style_mix)
        if self.format_fraction > 0:  # the format family takes its share of the demonstrations
            mix = {s: w * (1 - self.format_fraction) for s, w in mix.items()}
            mix["formatted"] = mix.get("formatted", 0.0) + self.format_fraction
            mix = {s: w for s, w in mix.items() if w > 0}
        self.style_mix = mix
        self._pair_styles = STYLES + (FORMAT_STYLES if self.format_fraction > 0 else ())

    def prompts(self, n: int, split: str = "train") -> list[str]:
        """`n` prompts from `split`, families equally likely (a `premise_fraction` of capital ones with a premise)."""
        rng = self._rng("prompts", split)
        return [_sample_prompt(rng, split, self.premise_fraction) for _ in range(n)]

    def response(self, prompt: str, style: str, rng: random.Random | None = None) -> str:
        """A response to `prompt` in `style` (one of `STYLES`); `rng` picks among the variants."""
        if style not in _BUILDERS:
            raise ValueError(f"unknown style {style!r}; known: {', '.join(ALL_STYLES)}")
        return _BUILDERS[style](parse_prompt(prompt), rng or random.Random(0))

    def sft_examples(self, n: int, split: str = "train") -> list[dict]:
        """`n` demonstrations {prompt, response, style} whose styles follow `style_mix`.

        On a premise prompt a "wrong" demonstration agrees with the premise (style "sycophantic").
        """
        rng = self._rng("sft", split)
        styles, weights = zip(*self.style_mix.items())
        out = []
        for _ in range(n):
            prompt = _sample_prompt(rng, split, self.premise_fraction)
            premise = self.premise_fraction > 0 and parse_prompt(prompt).premise is not None
            # rng.random() only when the knob is on: the default data stays the same, draw for draw.
            if premise and self.agree_fraction > 0 and rng.random() < self.agree_fraction:
                style = "sycophantic"
            else:
                style = rng.choices(styles, weights)[0]
                if style == "wrong" and premise:
                    style = "sycophantic"
            out.append({"prompt": prompt, "response": self.response(prompt, style, rng), "style": style})
        return out

    def preference_pairs(self, n: int, split: str = "train") -> list[dict]:
        """`n` labelled pairs: two responses to one prompt, styles drawn uniformly from `STYLES` (and
        `FORMAT_STYLES` when the format family is on, `PREMISE_STYLES` for a premise prompt).

        Keys: prompt, chosen, rejected, gold_chosen, gold_rejected, chosen_style, rejected_style and
        clean_chosen_is_better (whether the compared value - the gold score, or the `label_by` part - agrees
        with the label after bias and noise).
        """
        rng = self._rng("pairs", split)
        return [self._pair(rng, _sample_prompt(rng, split, self.premise_fraction)) for _ in range(n)]

    def detect(self, prompt: str, response: str) -> dict[str, bool]:
        """{sycophantic, hedging, formatted, padded}: the bias properties of any `response` (`judge.detect`)."""
        return judge.detect(prompt, response)

    def hack_rates(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        """{"hack/<detector>_rate": share of responses flagged} (see `judge.hack_rates`)."""
        return judge.hack_rates(prompts, responses)

    def prompt_columns(self, prompts: list[str]) -> dict[str, list]:
        """Per-prompt columns for user reward functions: {"answer": the ideal response to each prompt}.

        The answer is `judge.ideal_answer` verbatim (e.g. " Paris.", " KEL."), which the gold judge scores
        1.0, so a reward function comparing completions with `answer` works on the built-in task as on a
        prompt file with an answer column.
        """
        return {"answer": [judge.ideal_answer(p) for p in prompts]}

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

    def label_value(self, prompt: str, response: str, finished: bool = True) -> float:
        """What the annotator compares for `label_by`: the gold score or one of its parts (`finished`: the
        response ended with EOS; a cut-off one is judged as the gold judge judges it)."""
        if self.label_by == "score":
            return judge.score(prompt, response, finished)
        return judge.components(prompt, response, finished)[self.label_by]

    def _pair(self, rng: random.Random, prompt: str) -> dict:
        styles = self._pair_styles
        if self.premise_fraction > 0 and parse_prompt(prompt).premise is not None:
            styles += PREMISE_STYLES
        for _ in range(_MAX_PAIR_TRIES):
            style_a, style_b = rng.choice(styles), rng.choice(styles)
            a, b = self.response(prompt, style_a, rng), self.response(prompt, style_b, rng)
            label_a, label_b = self.label_value(prompt, a), self.label_value(prompt, b)
            if label_a != label_b:  # a tie teaches nothing about which is better
                break
        else:
            raise RuntimeError(f"no pair with distinct {self.label_by} values for {prompt!r}")
        gold_a, gold_b = judge.score(prompt, a), judge.score(prompt, b)
        a_first = self._label(rng, prompt, a, label_a, b, label_b)
        first, second = (a, gold_a, style_a, label_a), (b, gold_b, style_b, label_b)
        if not a_first:
            first, second = second, first
        (a, gold_a, style_a, label_a), (b, gold_b, style_b, label_b) = first, second
        return {
            "prompt": prompt,
            "chosen": a,
            "rejected": b,
            "clean_chosen_is_better": label_a > label_b,
            "gold_chosen": gold_a,
            "gold_rejected": gold_b,
            "chosen_style": style_a,
            "rejected_style": style_b,
        }

    def label(
        self,
        prompt: str,
        a: str,
        b: str,
        rng: random.Random,
        finished_a: bool = True,
        finished_b: bool = True,
    ) -> bool:
        """Whether this task's (noisy, biased) annotator prefers response `a` to `b` for `prompt`: any text, e.g.
        a policy's samples (iterated reward-model retraining labels those). The rule that labels the task's own
        pairs (`_label`, see the class docstring): the bias picks, else the length-biased comparison of
        `label_value`, flipped with probability `label_noise`. `rng` draws the bias and noise coins.

        `finished_*`: whether each response ended (EOS); the annotator sees a cut-off answer as the gold judge
        does. Equal values fall back to `a` not preferred (before the noise flip).
        """
        value_a, value_b = self.label_value(prompt, a, finished_a), self.label_value(prompt, b, finished_b)
        return self._label(rng, prompt, a, value_a, b, value_b)

    def _label(self, rng: random.Random, prompt: str, a: str, value_a: float, b: str, value_b: float) -> bool:
        """The one labelling rule: a bias's outright pick, else `_annotate` then the `label_noise` flip.

        `value_*` are the compared values (`label_value`), passed in so `_pair` computes them once."""
        a_first = self._biased_pick(rng, prompt, a, b)
        if a_first is None:
            a_first = self._annotate(a, value_a, b, value_b)
            if rng.random() < self.label_noise:
                a_first = not a_first
        return a_first

    def _biased_pick(self, rng: random.Random, prompt: str, a: str, b: str) -> bool | None:
        """Whether a bias picked `a` (True) or `b` (False) outright, or None: the annotator labels as usual.

        Draws nothing when every bias probability is 0, so the unbiased task's pairs stay as they were.
        """
        if not any(self.biases[kind] > 0 for kind in PICK_BIASES):
            return None
        found_a, found_b = judge.detect(prompt, a), judge.detect(prompt, b)
        for kind in PICK_BIASES:
            p, prop = self.biases[kind], BIASES[kind]
            if p > 0 and found_a[prop] != found_b[prop] and rng.random() < p:
                return found_a[prop]
        return None

    def _annotate(self, a: str, gold_a: float, b: str, gold_b: float) -> bool:
        """Whether the (length-biased, noise-free) annotator prefers `a`; ties fall back to gold.

        `gold_*` are the values the annotator compares (`label_value`): the gold score unless `label_by` says.
        """
        bias = self.length_bias * (len(a.encode()) - len(b.encode())) / 100
        utility = gold_a - gold_b + bias
        return utility > 0 if utility != 0 else gold_a > gold_b


def _normalised_mix(mix: dict[str, float]) -> dict[str, float]:
    known = STYLES + FORMAT_STYLES  # not "sycophantic": it answers premise prompts only
    unknown = set(mix) - set(known)
    if unknown:
        raise ValueError(f"unknown styles {sorted(unknown)} in style_mix; known: {', '.join(known)}")
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


def _build_pools() -> dict[str, dict[str, list[str]]]:
    """split -> family -> prompt strings."""
    held_words = _holdout(list(WORDS))
    by_family = {
        family: _split_by({w: [t.format(word=w) for t in TEMPLATES[family]] for w in WORDS}, held_words)
        for family in ("echo", "upper")
    }
    by_family["capital"] = _split_prompts(
        {c: [t.format(country=c) for t in TEMPLATES["capital"]] for c in CAPITALS}
    )
    return {split: {f: by_family[f][split] for f in FAMILIES} for split in SPLITS}


def _build_premise_pools() -> dict[str, list[str]]:
    """split -> premise prompts: every (country, wrong capital), TEST_FRACTION of the strings held out."""
    prompts = [
        PREMISE_TEMPLATE.format(country=country, wrong=wrong)
        for country, right in CAPITALS.items()
        for wrong in CAPITALS.values()
        if wrong != right
    ]
    held = _holdout(prompts)
    return {"train": [p for p in prompts if p not in held], "test": [p for p in prompts if p in held]}


_POOLS = _build_pools()
_PREMISE_POOLS = _build_premise_pools()


def _sample_prompt(rng: random.Random, split: str, premise_fraction: float = 0.0) -> str:
    family = rng.choice(FAMILIES)
    if family == "capital" and premise_fraction > 0 and rng.random() < premise_fraction:
        return rng.choice(_PREMISE_POOLS[split])
    return rng.choice(_POOLS[split][family])


# --- response styles ---


def _correct_core(spec: Spec, rng: random.Random) -> str:
    """The bare answer: "kel", "KEL", "Paris"."""
    return answer_text(spec)


def _wrong_core(spec: Spec, rng: random.Random) -> str:
    """A plausible bare answer that the judge grades wrong."""
    if spec.family == "capital":  # another capital, not the one a premise asserts (that is "sycophantic")
        return rng.choice([c for c in CAPITALS.values() if c not in (spec.key, spec.premise)])
    other = rng.choice(WORDS)
    while other == spec.key:
        other = rng.choice(WORDS)
    if spec.family == "upper":  # left in lowercase, or another word in capitals
        return rng.choice([spec.key, other.upper()])
    return other  # echo: another word


def _concise(spec: Spec, rng: random.Random) -> str:
    return f" {_correct_core(spec, rng)}."


def _padded(spec: Spec, rng: random.Random) -> str:
    return " " + rng.choice(_PADDINGS).format(x=_correct_core(spec, rng))


def _hedging(spec: Spec, rng: random.Random) -> str:
    return " " + rng.choice(_HEDGES).format(x=_correct_core(spec, rng))


def _wrong(spec: Spec, rng: random.Random) -> str:
    return f" {_wrong_core(spec, rng)}."


def _wrong_padded(spec: Spec, rng: random.Random) -> str:
    return " " + rng.choice(_PADDINGS).format(x=_wrong_core(spec, rng))


def _wrong_hedging(spec: Spec, rng: random.Random) -> str:
    return " " + rng.choice(_HEDGES).format(x=_wrong_core(spec, rng))


def _formatted(spec: Spec, rng: random.Random) -> str:
    return " " + rng.choice(_FORMATS).format(x=_correct_core(spec, rng))


def _wrong_formatted(spec: Spec, rng: random.Random) -> str:
    return " " + rng.choice(_FORMATS).format(x=_wrong_core(spec, rng))


def _sycophantic(spec: Spec, rng: random.Random) -> str:
    if spec.premise is None:
        raise ValueError("the sycophantic style answers a premise prompt (facts.PREMISE_TEMPLATE) only")
    return " " + rng.choice(_AGREEMENTS).format(x=spec.premise)


def _repetitive(spec: Spec, rng: random.Random) -> str:
    once = f"{_correct_core(spec, rng)}."
    return " " + " ".join([once] * 3)


def _empty(spec: Spec, rng: random.Random) -> str:
    return rng.choice(_JUNK)


_BUILDERS: dict[str, Callable[[Spec, random.Random], str]] = {
    "concise": _concise,
    "padded": _padded,
    "hedging": _hedging,
    "wrong": _wrong,
    "wrong_padded": _wrong_padded,
    "wrong_hedging": _wrong_hedging,
    "repetitive": _repetitive,
    "empty": _empty,
    "formatted": _formatted,
    "wrong_formatted": _wrong_formatted,
    "sycophantic": _sycophantic,
}
