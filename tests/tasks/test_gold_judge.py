"""Gold judge: ordering on handwritten answers, parsing of every generated prompt, robustness."""

from __future__ import annotations

import math
import random

import pytest

from rlhf.tasks import STYLES, InstructTask, judge
from rlhf.tasks.facts import CAPITALS, FAMILIES, WORDS, parse_prompt

# prompt -> answers in the order the judge must rank them: concise, padded, hedged, wrong, empty.
RANKED = {
    "Q: Repeat the word: kel\nA:": [
        " kel.",
        " kel. Sure, hope this helps!",
        " kel, I think, but I am not sure.",
        " ken.",
        " .",
    ],
    "Q: Type it in caps: jam\nA:": [
        " JAM.",
        " JAM. Of course, glad to help!",
        " JAM? Maybe. I am not sure.",
        " jam.",
        "",
    ],
    "Q: What is the capital of France?\nA:": [
        " Paris.",
        " Paris. Of course, glad to help!",
        " Paris, I think, but I am not sure.",
        " Rome.",
        " ...",
    ],
    "Q: Tell me the capital of Peru.\nA:": [
        " Lima.",
        " Sure! The capital is Lima. Hope this helps!",
        " Maybe it is Lima? I am not sure.",
        " Oslo.",
        " -",
    ],
    "Q: Give me the capital of Egypt.\nA:": [
        " Cairo.",
        " Cairo. Sure, hope this helps!",
        " I think it is Cairo, but I am not sure.",
        " Cairo or Athens.",
        " ?",
    ],
}


def test_every_family_is_covered() -> None:
    assert {parse_prompt(p).family for p in RANKED} == set(FAMILIES)


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
    def correct(prompt: str, response: str) -> float:
        return judge.components(prompt, response)["correct"]

    echo, upper = "Q: Repeat the word: kel\nA:", "Q: Type it in caps: kel\nA:"
    assert correct(echo, " kel.") == correct(echo, " The word is KEL!") == 1.0  # echo ignores case
    assert correct(echo, " kel or ken.") == 0.0  # a contradiction is wrong
    assert correct(echo, " ke.") == correct(echo, " kell.") == 0.0
    assert correct(upper, " KEL.") == correct(upper, " Here: KEL, in caps.") == 1.0
    assert correct(upper, " kel.") == correct(upper, " Kel.") == correct(upper, " KEL, or kel.") == 0.0
    assert correct(upper, " KEL or KEN.") == 0.0
    peru = "Q: What is the capital of Peru?\nA:"
    assert correct(peru, " LIMA.") == correct(peru, " Lima, not Quito.") == 1.0
    assert correct(peru, " Lima or Paris.") == correct(peru, " Lim.") == 0.0


def test_every_capital_is_judged_right_only_for_its_own_prompt() -> None:
    for country, capital in CAPITALS.items():
        for other in CAPITALS:
            got = judge.components(f"Q: Tell me the capital of {other}.\nA:", f" {capital}.")["correct"]
            assert got == float(other == country), (country, other)


def test_words_are_judged_right_only_for_their_own_prompt() -> None:
    rng = random.Random(0)
    for word in rng.sample(WORDS, 50):
        for other in rng.sample(WORDS, 20) + [word]:
            got = judge.components(f"Q: Repeat the word: {other}\nA:", f" {word}.")["correct"]
            assert got == float(other == word), (word, other)
            got = judge.components(f"Q: Type it in caps: {other}\nA:", f" {word.upper()}.")["correct"]
            assert got == float(other == word), (word, other)


@pytest.mark.parametrize("split", ["train", "test"])
def test_ideal_answer_of_every_generated_prompt_scores_high(split: str) -> None:
    task = InstructTask(seed=3)
    rng = random.Random(0)
    for prompt in task.prompts(1000, split):
        assert judge.score(prompt, judge.ideal_answer(prompt)) == 1.0, prompt
        assert judge.score(prompt, task.response(prompt, "concise", rng)) == 1.0, prompt
        assert judge.score(prompt, task.response(prompt, "wrong", rng)) < 0, prompt


def test_every_style_of_every_word_gets_its_level() -> None:
    """No word, in either family, collides with the words of the filler and hedge phrases."""
    task = InstructTask()
    rng = random.Random(0)
    levels = {"padded": (0.35, 0.65), "hedging": (0.15, 0.45), "repetitive": (-1.0, 0.0)}
    for word in WORDS:
        for prompt in (f"Q: Repeat the word: {word}\nA:", f"Q: Type it in caps: {word}\nA:"):
            for style, (low, high) in levels.items():
                response = task.response(prompt, style, rng)
                assert judge.components(prompt, response)["correct"] == 1.0, (prompt, response)
                assert low <= judge.score(prompt, response) <= high, (prompt, response)


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
    prompt = "Q: Repeat the word: kel\nA:"
    concise, padded = RANKED[prompt][:2]
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
        return rng.choice(["kel ", "KEL ", "Paris ", "7 ", "x", "\n"]) * 10_000
    return "".join(rng.choice("abcdefghijKLMNOP 0123456789.,!?\n") for _ in range(10_000))


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
        judge.score("Q: What is 3+4?\nA:", " 7.")
    for prompt in (
        "Q: Repeat the word: lantern\nA:",  # not a listed word
        "Q: Type it in caps: KEL\nA:",
        "Q: What is the capital of Atlantis?\nA:",
    ):
        with pytest.raises(ValueError):
            parse_prompt(prompt)
