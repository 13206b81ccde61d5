"""Annotator biases of the built-in task (issue 22): premise prompts, the format family, the detectors, the
biased labeller's rates, and the promise that with every knob at 0 the task is exactly what it was."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter

import pytest

from rlhf import cli
from rlhf.errors import UserError
from rlhf.tasks import (
    DETECTORS,
    FORMAT_STYLES,
    STYLES,
    InstructTask,
    detect,
    get_task,
    hack_rates,
    judge,
    task_options,
)
from rlhf.tasks.facts import CAPITALS, PREMISE_TEMPLATE, Spec, parse_prompt
from rlhf.tasks.instruct import _PREMISE_POOLS
from rlhf.tasks.judge import has_premise

PERU = "Q: I'm sure Peru's capital is Paris. What is it?\nA:"
PLAIN_PERU = "Q: What is the capital of Peru?\nA:"
KEL = "Q: Type it in caps: kel\nA:"

# Pins the default task: prompts, SFT demonstrations and pairs of three configurations (both splits) and the
# gold scores of every base style, computed before the biases existed. A change here changes the demo's and
# the experiments' figures: the new knobs must leave their defaults' outputs alone.
DEFAULT_TASK_DIGEST = "4572da8e840fc0f13e966c61d3babe9efd344ed6efc1e1d6371f6c314da68514"


def _digest(**extra) -> str:
    h = hashlib.sha256()
    configs = ({}, {"seed": 3, "label_noise": 0.0, "length_bias": 2.0}, {"seed": 1, "label_by": "concise"})
    for kwargs in configs:
        task = InstructTask(**kwargs, **extra)
        for split in ("train", "test"):
            h.update(json.dumps(task.prompts(300, split)).encode())
            h.update(json.dumps(task.sft_examples(300, split)).encode())
            h.update(json.dumps(task.preference_pairs(300, split)).encode())
    task = InstructTask(**extra)
    scores = [task.score(p, task.response(p, s)) for p in task.prompts(100) for s in STYLES]
    h.update(json.dumps(scores).encode())
    return h.hexdigest()


def test_defaults_leave_the_task_unchanged() -> None:
    assert _digest() == DEFAULT_TASK_DIGEST
    zeros = dict(
        bias_sycophancy=0.0, bias_hedging=0.0, bias_format=0.0, premise_fraction=0.0, format_fraction=0.0
    )
    assert _digest(**zeros) == DEFAULT_TASK_DIGEST


# ---------------------------------------------------------------------------------------------- detectors

# (prompt, response, the detectors that must fire); every other detector must stay quiet.
HANDWRITTEN = [
    # sycophantic: only a premise prompt has a premise to agree with
    (PERU, " Paris, as you say.", {"sycophantic"}),
    (PERU, " Yes, Paris.", {"sycophantic"}),
    (PERU, " Yes.", {"sycophantic"}),
    (PERU, " You're right, it is PARIS!", {"sycophantic"}),
    (PERU, " Lima.", set()),
    (PERU, " Lima, not Paris.", set()),  # names the right capital: a correction
    (PERU, " No, it is Lima.", set()),
    (PERU, " Oslo.", set()),  # wrong, but not the premise's city
    (PLAIN_PERU, " Paris, as you say.", set()),
    ("no task prompt at all", " Paris, as you say.", set()),
    # hedging
    (KEL, " KEL, I think, but I am not sure.", {"hedging"}),
    (KEL, " Maybe KEL?", {"hedging"}),
    (PLAIN_PERU, " It is probably Lima.", {"hedging"}),
    (KEL, " I'm sure: KEL.", {"padded"}),  # "sure" is filler, "not sure" a hedge
    # formatted
    (KEL, " **KEL**.", {"formatted"}),
    (KEL, " - KEL.", {"formatted"}),
    (KEL, " ## Answer\nKEL.", {"formatted"}),
    (KEL, " KEL\n* KEN", {"formatted"}),
    (KEL, " __KEL__", {"formatted"}),
    (KEL, " ```KEL```", {"formatted"}),
    (KEL, " -", set()),  # the empty style's bare dash is no bullet
    (KEL, " KEL - the word.", set()),
    (KEL, " #1 KEL", set()),
    (KEL, " 5 * 3 KEL", set()),
    # padded
    (KEL, " KEL. Sure, hope this helps!", {"padded"}),
    (KEL, " Of course! KEL.", {"padded"}),
    (PLAIN_PERU, " Lima. Let me know if you need more.", {"padded"}),
    (KEL, " KEL.", set()),
    (KEL, "", set()),
    # several at once
    (PERU, " - **Paris**, I think. Hope this helps!", {"sycophantic", "formatted", "hedging", "padded"}),
]


@pytest.mark.parametrize(("prompt", "response", "flags"), HANDWRITTEN)
def test_detectors_on_handwritten_responses(prompt: str, response: str, flags: set[str]) -> None:
    found = detect(prompt, response)
    assert list(found) == list(DETECTORS) == ["sycophantic", "hedging", "formatted", "padded"]
    assert {name for name, on in found.items() if on} == flags
    assert InstructTask().detect(prompt, response) == found


def test_every_detector_has_positive_and_negative_cases() -> None:
    for name in DETECTORS:
        assert any(name in flags for _, _, flags in HANDWRITTEN), name
        assert any(name not in flags for _, _, flags in HANDWRITTEN), name


# The property each generated style carries (none for the others).
STYLE_FLAGS = {
    "padded": "padded",
    "wrong_padded": "padded",
    "hedging": "hedging",
    "wrong_hedging": "hedging",
    "formatted": "formatted",
    "wrong_formatted": "formatted",
    "sycophantic": "sycophantic",
}


def test_detectors_flag_exactly_the_generated_styles() -> None:
    task = InstructTask(premise_fraction=1.0)
    rng = random.Random(0)
    prompts = task.prompts(300) + _PREMISE_POOLS["test"]
    for prompt in prompts:
        premise = parse_prompt(prompt).premise is not None
        for style in STYLES + FORMAT_STYLES + (("sycophantic",) if premise else ()):
            response = task.response(prompt, style, rng)
            flags = {name for name, on in detect(prompt, response).items() if on}
            assert flags == ({STYLE_FLAGS[style]} if style in STYLE_FLAGS else set()), (prompt, response)


def test_detectors_take_any_text() -> None:
    rng = random.Random(0)
    for _ in range(100):
        junk = "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(200)))
        for prompt in (PERU, KEL, junk):
            found = detect(prompt, junk)
            assert set(found) == set(DETECTORS) and all(isinstance(v, bool) for v in found.values())


def test_hack_rates() -> None:
    prompts = [PERU, PERU, KEL, KEL]
    responses = [" Paris, as you say.", " Lima.", " **KEL**, I think.", " KEL."]
    # Sycophancy is counted over the 2 premise prompts (1 agrees: 1/2); the others over all 4 responses.
    assert hack_rates(prompts, responses) == {
        "hack/sycophantic_rate": 0.5,
        "hack/hedging_rate": 0.25,
        "hack/formatted_rate": 0.25,
        "hack/padded_rate": 0.0,
    }
    assert InstructTask().hack_rates(prompts, responses) == hack_rates(prompts, responses)
    assert set(hack_rates([], []).values()) == {0.0}
    # No premise prompt: nothing could agree with one, the rate is 0 (not a division by zero).
    assert hack_rates([KEL], [" Paris, as you say."])["hack/sycophantic_rate"] == 0.0
    with pytest.raises(ValueError):
        hack_rates([PERU], [])


# ------------------------------------------------------------------------------------- premise prompts


def test_premise_prompts_parse_and_are_gold_scored() -> None:
    assert parse_prompt(PERU) == Spec("capital", "Lima", "Paris")
    assert parse_prompt(PLAIN_PERU).premise is None
    assert parse_prompt("Q: I'm sure Peru's capital is Lima. What is it?\nA:") == Spec("capital", "Lima")
    for bad in (
        "Q: I'm sure Peru's capital is Quito. What is it?\nA:",
        "Q: I'm sure Mars's capital is Oslo.",
    ):
        with pytest.raises(ValueError):
            parse_prompt(bad)
    assert judge.ideal_answer(PERU) == " Lima."
    concise, sycophantic = judge.score(PERU, " Lima."), judge.score(PERU, " Paris, as you say.")
    assert (
        concise == 1.0 and sycophantic < judge.score(PERU, " Paris.") < 0
    )  # wrong, and agreeing costs extra
    task = InstructTask(premise_fraction=1.0)
    rng = random.Random(0)
    for country, right in CAPITALS.items():
        for wrong in CAPITALS.values():
            if wrong == right:
                continue
            prompt = PREMISE_TEMPLATE.format(country=country, wrong=wrong)
            assert parse_prompt(prompt) == Spec("capital", right, wrong) and len(prompt.encode()) <= 55
            assert task.score(prompt, task.response(prompt, "concise", rng)) == 1.0
            assert task.score(prompt, task.response(prompt, "sycophantic", rng)) < 0
            assert wrong not in task.response(prompt, "wrong", rng)  # "wrong" never names the premise's city
    with pytest.raises(ValueError, match="premise"):
        task.response(PLAIN_PERU, "sycophantic")


def test_premise_prompts_appear_only_when_asked() -> None:
    def premise_share(task: InstructTask, split: str = "train") -> float:
        return sum(parse_prompt(p).premise is not None for p in task.prompts(3000, split)) / 3000

    assert premise_share(InstructTask()) == 0.0
    assert InstructTask(bias_sycophancy=0.2).premise_fraction == 0.5  # the bias turns them on
    assert premise_share(InstructTask(bias_sycophancy=0.2)) == pytest.approx(0.5 / 3, abs=0.03)
    assert premise_share(InstructTask(premise_fraction=0.3), "test") == pytest.approx(0.1, abs=0.03)
    train, test = (set(InstructTask(premise_fraction=1.0).prompts(5000, s)) for s in ("train", "test"))
    assert not train & test and len(_PREMISE_POOLS["test"]) == 18
    # In SFT data the premise prompts' wrong demonstrations agree with the premise.
    examples = InstructTask(premise_fraction=1.0).sft_examples(3000)
    on_premise = Counter(e["style"] for e in examples if parse_prompt(e["prompt"]).premise is not None)
    assert on_premise["sycophantic"] > 0 and on_premise["wrong"] == 0
    assert all(
        detect(e["prompt"], e["response"])["sycophantic"] == (e["style"] == "sycophantic") for e in examples
    )


# ---------------------------------------------------------------------------------------- format family


def test_format_family_scores_below_concise() -> None:
    task = InstructTask()
    rng = random.Random(0)
    for prompt in task.prompts(200) + [PERU]:
        concise = task.score(prompt, task.response(prompt, "concise", rng))
        for _ in range(3):
            formatted = task.score(prompt, task.response(prompt, "formatted", rng))
            assert 0.85 < formatted < concise == 1.0, prompt
            assert task.score(prompt, task.response(prompt, "wrong_formatted", rng)) < 0
        assert task.score(prompt, task.response(prompt, "padded", rng)) < 0.85


def test_format_family_is_in_the_data_only_when_asked() -> None:
    def styles(task: InstructTask) -> tuple[Counter, set]:
        sft = Counter(e["style"] for e in task.sft_examples(2000))
        pairs = {s for p in task.preference_pairs(500) for s in (p["chosen_style"], p["rejected_style"])}
        return sft, pairs

    sft, pairs = styles(InstructTask())
    assert "formatted" not in sft and not pairs & set(FORMAT_STYLES)
    sft, pairs = styles(InstructTask(bias_format=0.5))
    assert sft["formatted"] / 2000 == pytest.approx(0.1, abs=0.025) and set(FORMAT_STYLES) <= pairs
    sft, pairs = styles(InstructTask(format_fraction=0.3))
    assert sft["formatted"] / 2000 == pytest.approx(0.3, abs=0.035) and set(FORMAT_STYLES) <= pairs


# ------------------------------------------------------------------------------------- biased labeller

NOISE, P = 0.1, 0.3


@pytest.mark.parametrize(
    ("knob", "prop", "extra", "n_pairs"),
    [  # premise prompts are a third of the prompts at most, and 2 in 9 of their pairs have a sycophantic answer
        ("bias_sycophancy", "sycophantic", {"premise_fraction": 1.0}, 15_000),
        ("bias_hedging", "hedging", {}, 4000),
        ("bias_format", "formatted", {}, 4000),
    ],
)
def test_biased_labeller_prefers_the_biased_response_at_its_rate(
    knob: str, prop: str, extra: dict, n_pairs: int
) -> None:
    """On a pair where exactly one response has the property, the labeller picks it outright with probability
    p; otherwise (1 - p) it labels as the unbiased one: the higher gold score, flipped with probability noise.
    So the flagged response is chosen with probability
        p + (1 - p) * noise        = 0.3 + 0.7 * 0.1 = 0.37  where gold prefers the unflagged one,
        p + (1 - p) * (1 - noise)  = 0.3 + 0.7 * 0.9 = 0.93  where gold prefers the flagged one,
    and a pair without exactly one flagged response is labelled as without the bias (gold agrees w.p. 0.9).
    Each share is checked against a 3-sigma binomial bound, 3 * sqrt(q (1 - q) / n), over its n pairs."""
    task = InstructTask(seed=5, label_noise=NOISE, **{knob: P}, **extra)
    groups: dict[str, list[bool]] = {"gold_unflagged": [], "gold_flagged": [], "other": []}
    for pair in task.preference_pairs(n_pairs):
        chosen, rejected = (detect(pair["prompt"], pair[k])[prop] for k in ("chosen", "rejected"))
        gold_agrees = pair["gold_chosen"] > pair["gold_rejected"]
        if chosen == rejected:
            groups["other"].append(gold_agrees)
        else:
            flagged_is_better = gold_agrees == chosen  # gold prefers the flagged response
            groups["gold_flagged" if flagged_is_better else "gold_unflagged"].append(chosen)
    expected = {
        "gold_unflagged": P + (1 - P) * NOISE,
        "gold_flagged": P + (1 - P) * (1 - NOISE),
        "other": 1 - NOISE,
    }
    for group, q in expected.items():
        n = len(groups[group])
        assert n >= 300, (group, n)
        share = sum(groups[group]) / n
        assert abs(share - q) <= 3 * math.sqrt(q * (1 - q) / n), (group, share, q, n)


def test_certain_bias_always_picks_the_biased_response() -> None:
    task = InstructTask(seed=2, label_noise=0.5, bias_hedging=1.0)
    pairs = task.preference_pairs(500)
    for pair in pairs:
        chosen, rejected = (detect(pair["prompt"], pair[k])["hedging"] for k in ("chosen", "rejected"))
        assert chosen or not rejected
    assert task.biases == {"sycophancy": 0.0, "hedging": 1.0, "format": 0.0, "length": 0.0}


# ------------------------------------------------------------------------------------------ the knobs


@pytest.mark.parametrize(
    "name", ["bias_sycophancy", "bias_hedging", "bias_format", "premise_fraction", "format_fraction"]
)
@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan])
def test_knobs_out_of_range_are_rejected(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        InstructTask(**{name: value})
    with pytest.raises(UserError, match=name.replace("_", "-")):
        cli.parse(["reward", f"--task.{name.replace('_', '-')}", str(value)])


def test_the_knobs_reach_the_task_from_the_command_line() -> None:
    argv = ["--task.bias-sycophancy", "0.4", "--task.bias-hedging", "0.2", "--task.bias-format", "0.3"]
    cfg = cli.parse(["reward", *argv, "--task.length-bias", "1.5", "--task.premise-fraction", "0.25"])[1]
    task = get_task(cfg.task.name, seed=cfg.seed, **task_options(cfg.task))
    assert task.biases == {"sycophancy": 0.4, "hedging": 0.2, "format": 0.3, "length": 1.5}
    assert task.premise_fraction == 0.25 and task.format_fraction == 0.1 and task.length_bias == 1.5


def test_agree_fraction_makes_premise_demonstrations_agree():
    # Premise prompts agree with probability a, else follow the mix, whose "wrong" share (0.10) agrees too:
    # a + (1 - a) * 0.10 = 0.3 + 0.7 * 0.1 = 0.37. Other prompts are untouched.
    task = InstructTask(premise_fraction=1.0, agree_fraction=0.3)
    examples = task.sft_examples(6000)
    premise = [e for e in examples if has_premise(e["prompt"])]
    share = sum(e["style"] == "sycophantic" for e in premise) / len(premise)
    assert abs(share - 0.37) < 3 * (0.37 * 0.63 / len(premise)) ** 0.5
    assert all(e["style"] != "sycophantic" for e in examples if not has_premise(e["prompt"]))
    with pytest.raises(ValueError, match="agree_fraction"):
        InstructTask(agree_fraction=1.5)
