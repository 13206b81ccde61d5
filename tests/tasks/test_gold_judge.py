"""Gold judge: ordering on handwritten answers, parsing of every generated prompt, robustness."""

from __future__ import annotations

import math
import random

import pytest

from rlhf.tasks import STYLES, InstructTask, judge
from rlhf.tasks.facts import CAPITALS, DEFINITIONS, parse_prompt

# prompt -> answers in the order the judge must rank them: concise, padded, hedged, wrong, empty.
RANKED = {
    "Q: What is 3+4?\nA:": [
        " 7.",
        " Sure! The answer is 7. Hope this helps!",
        " I think it is 7, but I am not sure.",
        " 8.",
        " .",
    ],
    "Q: What is 9 minus 2?\nA:": [
        " 7.",
        " Of course! The answer is 7. Happy to help!",
        " Maybe it is 7? I am not sure.",
        " 6.",
        "",
    ],
    "Q: What is the capital of France?\nA:": [
        " Paris.",
        " Great question! The capital is Paris. Glad to help!",
        " Perhaps it is Paris, but I could be wrong.",
        " Rome.",
        " ...",
    ],
    "Q: Name 3 colors.\nA:": [
        " red, blue, green.",
        " Sure! Red, blue, green. Hope this helps!",
        " I think red, blue, green, but I am not sure.",
        " red, blue, apple.",
        " ?",
    ],
    "Q: List 2 days of the week.\nA:": [
        " Monday, Friday.",
        " Certainly! Monday, Friday. Happy to help!",
        " Maybe Monday, Friday? I am not sure.",
        " Monday, Friday, Sunday.",
        " -",
    ],
    "Q: Define volcano.\nA:": [
        " A mountain that erupts lava.",
        " Sure! A mountain that erupts lava. Hope this helps!",
        " I think it is a mountain that erupts lava, but I am not sure.",
        " A huge body of salt water.",
        "",
    ],
    "Q: What does gravity mean?\nA:": [
        " The force that pulls masses together.",
        " Of course! Gravity is the force that pulls masses together. Glad to help!",
        " Perhaps it is the force that pulls masses together, but I could be wrong.",
        " A tool that measures temperature.",
        " .",
    ],
}


@pytest.mark.parametrize("prompt", list(RANKED))
def test_ordering_on_handwritten_answers(prompt: str) -> None:
    concise, padded, hedged, wrong, empty = (judge.score(prompt, r) for r in RANKED[prompt])
    assert concise > padded > hedged > wrong > empty
    assert concise == pytest.approx(1.0)
    assert 0.35 <= padded <= 0.65
    assert 0.15 <= hedged <= 0.45
    assert wrong == pytest.approx(-0.5, abs=0.1)
    assert empty == -1.0


@pytest.mark.parametrize("prompt", list(RANKED))
def test_repetition_and_missing_eos_score_low(prompt: str) -> None:
    concise = RANKED[prompt][0]
    assert judge.score(prompt, concise * 3) <= 0.0
    assert judge.score(prompt, concise, finished=False) == -1.0


def test_correctness_rules() -> None:
    assert judge.components("Q: What is 3+4?\nA:", " 7 or 8.")["correct"] == 0.0  # a contradiction is wrong
    assert judge.components("Q: What is 3+4?\nA:", " 07.")["correct"] == 1.0
    assert judge.components("Q: What is the capital of Peru?\nA:", " Lima, not Quito.")["correct"] == 1.0
    assert judge.components("Q: What is the capital of Peru?\nA:", " Lima or Paris.")["correct"] == 0.0
    assert judge.components("Q: Name 2 fruits.\nA:", " apple, apple.")["correct"] == 0.0  # not 2 distinct
    assert judge.components("Q: Name 2 fruits.\nA:", " Apple and a PEAR.")["correct"] == 1.0
    assert judge.components("Q: Define river.\nA:", " Water that flows, fresh.")["correct"] == 1.0


def test_every_definition_and_capital_is_judged_right_only_for_its_own_prompt() -> None:
    for word, (text, _) in DEFINITIONS.items():
        for other in DEFINITIONS:
            got = judge.components(f"Q: Define {other}.\nA:", f" {text}.")["correct"]
            assert got == float(other == word), (word, other)
    for country, capital in CAPITALS.items():
        for other in CAPITALS:
            got = judge.components(f"Q: What is the capital of {other}?\nA:", f" {capital}.")["correct"]
            assert got == float(other == country), (country, other)


@pytest.mark.parametrize("split", ["train", "test"])
def test_ideal_answer_of_every_generated_prompt_scores_high(split: str) -> None:
    task = InstructTask(seed=3)
    rng = random.Random(0)
    for prompt in task.prompts(1000, split):
        assert judge.score(prompt, judge.ideal_answer(prompt)) >= 0.9, prompt
        assert judge.score(prompt, task.response(prompt, "concise", rng)) >= 0.9, prompt
        assert judge.score(prompt, task.response(prompt, "wrong", rng)) < 0, prompt


def test_score_is_the_documented_function_of_the_components() -> None:
    task = InstructTask(seed=1)
    rng = random.Random(1)
    for prompt in task.prompts(200):
        for style in STYLES:
            response = task.response(prompt, style, rng)
            for finished in (True, False):
                c = judge.components(prompt, response, finished)
                raw = c["helpful"] - 0.5 * (1 - c["concise"]) - c["filler"]
                assert judge.score(prompt, response, finished) == pytest.approx(max(-1.0, min(1.0, raw)))
                assert c["correct"] in (0.0, 1.0) and 0.0 <= c["concise"] <= 1.0


def test_helpful_favours_fuller_answers_and_concise_favours_brevity() -> None:
    prompt, (concise, padded) = "Q: What is 3+4?\nA:", RANKED["Q: What is 3+4?\nA:"][:2]
    full, short = judge.components(prompt, padded), judge.components(prompt, concise)
    assert full["helpful"] > short["helpful"]
    assert full["concise"] < short["concise"] == 1.0


def _garbage(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(300))).decode("utf-8", "replace")
    if kind == 1:  # any code point, lone surrogates included
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(300)))
    if kind == 2:
        return rng.choice(["7 ", "Paris ", "red, ", "lava ", "x", "\n"]) * 10_000
    return "".join(rng.choice("abcdefghij 0123456789.,!?\n") for _ in range(10_000))


def test_garbage_responses_get_finite_bounded_scores() -> None:
    rng = random.Random(0)
    prompts = InstructTask().prompts(20)
    for i in range(200):
        prompt, response = prompts[i % len(prompts)], _garbage(rng)
        for finished in (True, False):
            s = judge.score(prompt, response, finished)
            assert math.isfinite(s) and -1.0 <= s <= 1.0
            assert all(math.isfinite(v) for v in judge.components(prompt, response, finished).values())


def test_unknown_prompt_is_rejected() -> None:
    with pytest.raises(ValueError, match="not an instruct-task prompt"):
        judge.score("Q: What is 12+4?\nA:", " 16.")
    with pytest.raises(ValueError):
        parse_prompt("Q: Define unicorn.\nA:")
