"""`InstructTask.label`: the task's annotator on any two responses (iterated reward-model retraining labels policy
samples with it) follows the rule that labels the task's own pairs, at the documented rates."""

from __future__ import annotations

import math
import random

import pytest

from rlhf.tasks import InstructTask, instruct, judge

PROMPT = "Q: Repeat the word: kel\nA:"
CONCISE, PADDED, HEDGED, WRONG = (
    " kel.",
    " kel. Sure, hope this helps!",
    " kel, I think, but I am not sure.",
    " dog.",
)
N = 4000


def share_a(task: InstructTask, a: str, b: str, n: int = N, seed: int = 0) -> float:
    rng = random.Random(seed)
    return sum(task.label(PROMPT, a, b, rng) for _ in range(n)) / n


def within_noise(share: float, q: float, n: int = N) -> bool:
    """|share - q| within a 3-sigma binomial bound (exact when q is 0 or 1)."""
    return abs(share - q) <= 3 * math.sqrt(q * (1 - q) / n)


def test_the_responses_score_as_the_rates_below_assume():
    gold = {r: judge.score(PROMPT, r) for r in (CONCISE, PADDED, HEDGED, WRONG)}
    assert gold[CONCISE] > gold[PADDED] > gold[WRONG] and gold[CONCISE] > gold[HEDGED] > gold[WRONG]
    # The padding's 24 extra bytes cost it < 0.48 gold, so a length bias of 2 (+0.48) outweighs the loss.
    assert 0 < gold[CONCISE] - gold[PADDED] < 2 * (len(PADDED) - len(CONCISE)) / 100


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_noise_flips_the_gold_comparison_at_its_rate(noise):
    # No bias: the higher gold is chosen, then flipped with probability noise, in either order of the pair.
    task = InstructTask(label_noise=noise)
    assert within_noise(share_a(task, CONCISE, WRONG), 1 - noise)
    assert within_noise(share_a(task, WRONG, CONCISE), noise)


def test_length_bias_prefers_the_padded_answer_before_the_noise_flip():
    # gold(concise) - gold(padded) < 0.02 * 24 bytes: the biased utility favours padding; noise 0.1 flips it.
    task = InstructTask(label_noise=0.1, length_bias=2.0)
    assert within_noise(share_a(task, PADDED, CONCISE), 0.9)
    assert within_noise(share_a(InstructTask(label_noise=0.1), PADDED, CONCISE), 0.1)


def test_hedging_bias_picks_the_hedged_answer_outright_at_its_rate():
    # Exactly one hedged answer: picked w.p. p, else the noisy gold comparison: p + (1 - p) * noise = 0.37.
    task = InstructTask(label_noise=0.1, bias_hedging=0.3)
    assert within_noise(share_a(task, HEDGED, CONCISE), 0.3 + 0.7 * 0.1)
    # Neither response hedged: the bias draws but never acts, the gold comparison stands (0.9).
    assert within_noise(share_a(task, CONCISE, WRONG), 0.9)


def test_label_is_the_rule_that_labels_the_task_pairs():
    # Replaying each generated pair's label draws with `label` from the same rng state gives the same label:
    # `_pair` draws its styles and responses, then calls the one rule `label` calls.
    task = InstructTask(seed=4, label_noise=0.2, bias_hedging=0.4, length_bias=1.0)
    pairs = task.preference_pairs(300)
    ours = task._rng("pairs", "train")
    for pair in pairs:
        prompt = instruct._sample_prompt(ours, "train", task.premise_fraction)
        assert prompt == pair["prompt"]
        styles = task._pair_styles
        while True:
            sa, sb = ours.choice(styles), ours.choice(styles)
            a, b = task.response(prompt, sa, ours), task.response(prompt, sb, ours)
            if task.label_value(prompt, a) != task.label_value(prompt, b):
                break
        a_first = task.label(prompt, a, b, ours)
        assert (pair["chosen"], pair["rejected"]) == ((a, b) if a_first else (b, a))


def test_a_cut_off_answer_is_labelled_as_the_gold_judge_scores_it():
    # Unfinished (no EOS): gold -1, below a wrong answer's -0.5, so without noise the wrong answer wins.
    task = InstructTask(label_noise=0.0)
    assert not task.label(PROMPT, CONCISE, WRONG, random.Random(0), finished_a=False)
    assert task.label(PROMPT, CONCISE, WRONG, random.Random(0))
