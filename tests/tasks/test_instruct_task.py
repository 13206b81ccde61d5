"""InstructTask: determinism, disjoint splits, SFT style mix and preference-pair labelling."""

from __future__ import annotations

from collections import Counter
from statistics import mean

import pytest

from rlhf.tasks import STYLES, InstructTask, get_task
from rlhf.tasks.facts import CAPITALS, FAMILIES, WORDS, parse_prompt


def test_get_task() -> None:
    task = get_task("instruct", seed=5, label_noise=0.0)
    assert isinstance(task, InstructTask) and task.name == "instruct" and task.seed == 5
    with pytest.raises(ValueError, match="instruct"):
        get_task("chess")


def test_everything_is_deterministic_from_the_seed() -> None:
    a, b, c = InstructTask(seed=7), InstructTask(seed=7), InstructTask(seed=8)
    assert a.prompts(50, "test") == b.prompts(50, "test") != c.prompts(50, "test")
    assert a.sft_examples(50) == b.sft_examples(50) != c.sft_examples(50)
    assert a.preference_pairs(50) == b.preference_pairs(50) != c.preference_pairs(50)
    assert a.prompts(100)[:40] == a.prompts(40)  # asking for more extends, never reshuffles


def _words(prompts: set[str]) -> set[str]:
    return {parse_prompt(p).key for p in prompts if parse_prompt(p).family in ("echo", "upper")}


def test_train_and_test_prompts_are_disjoint() -> None:
    task = InstructTask()
    train, test = set(task.prompts(20_000, "train")), set(task.prompts(5_000, "test"))
    assert not train & test
    assert {parse_prompt(p).family for p in test} == set(FAMILIES)
    # Echo and upper hold out words: a test word occurs in no training prompt of either family.
    train_words, test_words = _words(train), _words(test)
    assert test_words and not train_words & test_words
    assert len(test_words) / len(WORDS) == pytest.approx(0.2, abs=0.03)
    # Capital holds out prompt strings: every test country is still taught under another template.
    test_capitals = {parse_prompt(p).key for p in test if parse_prompt(p).family == "capital"}
    train_capitals = {parse_prompt(p).key for p in train if parse_prompt(p).family == "capital"}
    assert len(test_capitals) == 6 and train_capitals == set(CAPITALS.values())


def test_splits_do_not_depend_on_the_seed() -> None:
    # 20k draws cover every one of the ~650 test prompts (the test split is a fixed set).
    assert set(InstructTask(seed=0).prompts(20_000, "test")) == set(
        InstructTask(seed=1).prompts(20_000, "test")
    )


def test_families_are_equally_likely() -> None:
    counts = Counter(parse_prompt(p).family for p in InstructTask().prompts(6000))
    for family in FAMILIES:
        assert counts[family] / 6000 == pytest.approx(1 / len(FAMILIES), abs=0.03), family


def test_prompts_and_responses_have_the_promised_shape() -> None:
    task = InstructTask()
    for e in task.sft_examples(2000):
        assert (
            15 <= len(e["prompt"].encode()) <= 40
            and e["prompt"].startswith("Q: ")
            and e["prompt"].endswith("\nA:")
        )
        assert e["response"].startswith(" ")
        assert len((e["prompt"] + e["response"]).encode()) <= 80
    for pair in task.preference_pairs(500):
        assert len((pair["prompt"] + pair["chosen"]).encode()) <= 80 and pair["chosen"].strip()


def test_answering_styles_start_with_the_answer() -> None:
    task = InstructTask()
    for prompt in task.prompts(300):
        ideal = task.response(prompt, "concise").rstrip(".")
        for style in ("padded", "hedging", "repetitive"):
            assert task.response(prompt, style).startswith(ideal), (prompt, style)


def test_sft_style_mix_matches_and_is_mediocre() -> None:
    task = InstructTask(seed=2)
    examples = task.sft_examples(5000)
    counts = Counter(e["style"] for e in examples)
    for style, weight in task.style_mix.items():
        assert counts[style] / len(examples) == pytest.approx(weight, abs=0.025), style
    gold = mean(task.score(e["prompt"], e["response"]) for e in examples)
    assert 0.2 < gold < 0.6  # well below the 1.0 of concise answers: room for PPO


def test_custom_style_mix() -> None:
    examples = InstructTask(style_mix={"concise": 2.0, "empty": 0.0}).sft_examples(200)
    assert {e["style"] for e in examples} == {"concise"}
    assert all(InstructTask().score(e["prompt"], e["response"]) == 1.0 for e in examples)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"style_mix": {"rude": 1.0}},
        {"style_mix": {"concise": -1.0}},
        {"style_mix": {}},
        {"label_noise": 1.5},
        {"length_bias": -1},
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        InstructTask(**kwargs)


def test_bad_split_and_style_are_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        InstructTask().prompts(1, "validation")
    with pytest.raises(ValueError, match="style"):
        InstructTask().response("Q: Repeat the word: kel\nA:", "rude")


def test_clean_pairs_always_prefer_the_higher_gold_score() -> None:
    task = InstructTask(seed=4, label_noise=0.0, length_bias=0.0)
    pairs = task.preference_pairs(2000)
    assert all(p["gold_chosen"] > p["gold_rejected"] and p["clean_chosen_is_better"] for p in pairs)
    for p in pairs[:200]:
        assert p["gold_chosen"] == task.score(p["prompt"], p["chosen"])
        assert p["gold_rejected"] == task.score(p["prompt"], p["rejected"])
    # Empty and wrong_hedging both sit at the floor (-1): they tie with each other and lose to everything else.
    assert set(Counter(p["chosen_style"] for p in pairs)) == set(STYLES) - {"empty", "wrong_hedging"}


def test_label_noise_flips_its_share_of_labels() -> None:
    pairs = InstructTask(seed=4, label_noise=0.2).preference_pairs(4000)
    flipped = [not p["clean_chosen_is_better"] for p in pairs]
    assert mean(flipped) == pytest.approx(0.2, abs=0.03)
    assert all((p["gold_chosen"] > p["gold_rejected"]) == p["clean_chosen_is_better"] for p in pairs)


def test_length_bias_makes_the_chosen_answer_longer_more_often() -> None:
    def longer_share(bias: float) -> float:
        pairs = InstructTask(seed=4, label_noise=0.0, length_bias=bias).preference_pairs(2000)
        return mean(len(p["chosen"]) > len(p["rejected"]) for p in pairs)

    unbiased, biased = longer_share(0.0), longer_share(2.0)
    assert biased > unbiased + 0.1
    agree = mean(
        p["clean_chosen_is_better"]
        for p in InstructTask(label_noise=0.0, length_bias=2.0).preference_pairs(2000)
    )
    assert agree < 1.0  # the bias, not noise, now mislabels some pairs
