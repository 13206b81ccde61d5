"""The closed world of the instruct task: prompt templates, knowledge tables and prompt parsing.

Both the generator (`instruct.py`) and the gold judge (`judge.py`) read these tables. The judge recovers
everything it needs from the prompt text alone (`parse_prompt`), so it can grade any response a policy
writes without hidden state.

The families are chosen for a ~1M-parameter byte-level model trained for about a minute of CPU: most
answers can be copied or computed from the prompt, so they generalise to prompts never seen in training.

- echo: "Q: Repeat the word: lantern" -> "lantern" (copy a word);
- upper: "Q: Uppercase: lantern" -> "LANTERN" (copy a word, changing its case);
- compare: "Q: Which is larger, 3 or 8?" -> "8" (pick the larger of two digits);
- successor: "Q: What comes after 47?" -> "48" (add one to a number below 99);
- capital: "Q: What is the capital of France?" -> "Paris" (a small memorised table);
- items: "Q: Name 3 colors." -> "red, blue, green" (any n distinct members of a small category).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

FAMILIES = ("echo", "upper", "compare", "successor", "capital", "items")

# Two surface forms per family: enough variety to avoid a single string per question, few enough to learn.
TEMPLATES = {
    "echo": ("Q: Repeat the word: {word}\nA:", "Q: Say the word {word}.\nA:"),
    "upper": ("Q: Uppercase: {word}\nA:", "Q: Write {word} in caps.\nA:"),
    "compare": ("Q: Which is larger, {a} or {b}?\nA:", "Q: Which is bigger: {a} or {b}?\nA:"),
    "successor": ("Q: What comes after {n}?\nA:", "Q: What number follows {n}?\nA:"),
    "capital": ("Q: What is the capital of {country}?\nA:", "Q: Name the capital of {country}.\nA:"),
    "items": ("Q: Name {n} {category}.\nA:", "Q: List {n} {category}.\nA:"),
}
DIGITS = tuple(range(10))  # compare: two distinct digits
NUMBERS = tuple(range(99))  # successor: the answer stays below 100
ITEM_COUNTS = (2, 3, 4)

# Single-word capitals only, so one token identifies one capital and none is also a country's name.
CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Russia": "Moscow",
    "Greece": "Athens",
    "Norway": "Oslo",
}

# Categories share no member, so every member names one category. The listed order is the canonical one
# that demonstrations use (the judge accepts any n distinct members).
CATEGORIES = {
    "colors": ("red", "blue", "green", "yellow", "black", "white", "pink"),
    "fruits": ("apple", "banana", "cherry", "grape", "lemon", "mango", "pear"),
    "animals": ("cat", "dog", "horse", "cow", "lion", "bear", "fox"),
    "days": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "shapes": ("circle", "square", "triangle", "oval", "star", "heart"),
}

# Words to echo or uppercase: lowercase nouns of 3-7 letters, none a capital, a category member or a word
# of the response templates and judge phrases ("sure", "answer", "think", ...), so a response mentions a
# listed word only when it answers with it.
WORDS = tuple(
    """
    anchor apron arrow badge bagel banjo barrel basket beach berry bison blanket bottle bread brick bridge
    broom brush bucket butter button cabin cable cactus camel camera canal candle canoe carpet carrot castle
    chair chalk cheese clock cloud coast cobra comet cookie copper coral cotton couch crayon crown daisy desk
    dolphin donkey dragon drum eagle engine fabric falcon feather fence fern flute forest fork fossil frog
    garden gecko ghost giant ginger glove goat goose grass guitar hammer harbor hawk helmet hill honey horn
    hotel igloo ink jacket jar jelly jewel jungle kayak kettle key kite kitten knife koala ladder lake lamp
    lantern leaf lily lizard llama magnet map maple marble mask meadow melon metal mint mirror monkey moose
    moth motor mouse mud needle nest net noodle nut oak oar olive onion orbit otter owl oyster paddle palace
    pan panda paper parrot pearl pen pencil pepper piano pie pig pillow pilot pine pipe planet plate pocket
    pond pony pot potato puzzle quilt rabbit radio rain raven reef ring river road robot rocket rope rose
    ruby rug saddle sail salad salt sand sandal scarf seal seed shadow shark sheep shell ship shoe silk
    silver singer skate sled snail snake sock sofa soup spider spoon statue stone storm straw sugar summer
    sunset swan sword table tent tiger toast tomato towel tower toy train tree truck tulip turtle valley van
    vase velvet violin wagon walnut wax whale wheat wheel window winter wizard wolf wool yak yarn yogurt
    zebra
    """.split()
)

_ECHO_RE = re.compile(r"Q: (?:Repeat the word: ([a-z]+)|Say the word ([a-z]+)\.)\s*A:")
_UPPER_RE = re.compile(r"Q: (?:Uppercase: ([a-z]+)|Write ([a-z]+) in caps\.)\s*A:")
_COMPARE_RE = re.compile(r"Q: Which is (?:larger,|bigger:) (\d) or (\d)\?\s*A:")
_SUCCESSOR_RE = re.compile(r"Q: (?:What comes after|What number follows) (\d{1,2})\?\s*A:")
_CAPITAL_RE = re.compile(r"Q: (?:What is|Name) the capital of ([A-Za-z]+)[?.]\s*A:")
_ITEMS_RE = re.compile(r"Q: (?:Name|List) (\d) ([a-z ]+)\.\s*A:")
_WORD_SET = frozenset(WORDS)


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for, recovered from its text.

    `key` is the expected answer (echo and upper: the word in lowercase; compare and successor: the number;
    capital: the capital) or the category (items); `n` is the number of items asked for (items) or the
    smaller digit (compare), else 0.
    `ideal_len` is the byte length of the longest concise correct answer, stripped: responses up to it are
    never "too long".
    """

    family: str
    key: str
    n: int = 0

    @property
    def ideal_len(self) -> int:
        return _ideal_len(self)


def parse_prompt(prompt: str) -> Spec:
    """The `Spec` of a task prompt; raises ValueError for text that is not one of the task's prompts."""
    spec = _parse(prompt.strip())
    if spec is None:
        raise ValueError(f"not an instruct-task prompt: {prompt[:80]!r}")
    return spec


@lru_cache(maxsize=4096)  # prompts repeat across a run; parsing each once keeps the judge fast
def _parse(prompt: str) -> Spec | None:
    if (m := _ECHO_RE.fullmatch(prompt)) and (word := m[1] or m[2]) in _WORD_SET:
        return Spec("echo", word)
    if (m := _UPPER_RE.fullmatch(prompt)) and (word := m[1] or m[2]) in _WORD_SET:
        return Spec("upper", word)
    if (m := _COMPARE_RE.fullmatch(prompt)) and m[1] != m[2]:
        return Spec("compare", max(m[1], m[2]), int(min(m[1], m[2])))
    if (m := _SUCCESSOR_RE.fullmatch(prompt)) and str(int(m[1])) == m[1] and int(m[1]) in NUMBERS:
        return Spec("successor", str(int(m[1]) + 1))
    if (m := _CAPITAL_RE.fullmatch(prompt)) and m[1] in CAPITALS:
        return Spec("capital", CAPITALS[m[1]])
    if (m := _ITEMS_RE.fullmatch(prompt)) and m[2] in CATEGORIES and int(m[1]) in ITEM_COUNTS:
        return Spec("items", m[2], int(m[1]))
    return None


def answer_text(spec: Spec) -> str:
    """The bare answer as it should be written: "lantern", "LANTERN", "8", "Paris"; items: the first n."""
    if spec.family == "upper":
        return spec.key.upper()
    if spec.family == "items":
        return ", ".join(CATEGORIES[spec.key][: spec.n])
    return spec.key


def concise_answer(spec: Spec, items: tuple[str, ...] | None = None) -> str:
    """The ideal response (leading space, final period); for items, `items` picks which members to name."""
    if spec.family == "items" and items is not None:
        return " " + ", ".join(items) + "."
    return f" {answer_text(spec)}."


@lru_cache(maxsize=256)
def _ideal_len(spec: Spec) -> int:
    if spec.family == "items":
        longest = tuple(sorted(CATEGORIES[spec.key], key=len)[-spec.n :])
        return len(concise_answer(spec, longest).strip().encode())
    return len(concise_answer(spec).strip().encode())
