"""The closed world of the instruct task: prompt templates, knowledge tables and prompt parsing.

Both the generator (`instruct.py`) and the gold judge (`judge.py`) read these tables. The judge recovers
everything it needs from the prompt text alone (`parse_prompt`), so it can grade any response a policy
writes without hidden state. Vocabularies are small and closed on purpose: a ~1M-parameter byte-level
model has to memorise them in about a minute of CPU training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

FAMILIES = ("arithmetic", "capital", "items", "definition")

# Two surface forms per family: enough variety to avoid a single string per fact, few enough to learn.
ARITHMETIC_TEMPLATES = ("Q: What is {a}{sym}{b}?\nA:", "Q: What is {a} {word} {b}?\nA:")
OPERATORS = {"+": "plus", "-": "minus"}
CAPITAL_TEMPLATES = ("Q: What is the capital of {country}?\nA:", "Q: Name the capital of {country}.\nA:")
ITEMS_TEMPLATES = ("Q: Name {n} {category}.\nA:", "Q: List {n} {category}.\nA:")
ITEM_COUNTS = (2, 3, 4)
DEFINITION_TEMPLATES = ("Q: Define {word}.\nA:", "Q: What does {word} mean?\nA:")

# Single-word capitals only, so one token identifies one capital and none is also a country's name.
CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Russia": "Moscow",
    "China": "Beijing",
    "Canada": "Ottawa",
    "Greece": "Athens",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Cuba": "Havana",
    "Thailand": "Bangkok",
    "Turkey": "Ankara",
    "Australia": "Canberra",
    "Iran": "Tehran",
    "Hungary": "Budapest",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
}

# Categories share no member (no "orange" in both colors and fruits), so every member names one category.
CATEGORIES = {
    "colors": ("red", "blue", "green", "yellow", "black", "white", "pink", "purple", "brown", "gray"),
    "fruits": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "kiwi"),
    "animals": ("cat", "dog", "horse", "cow", "lion", "tiger", "bear", "wolf", "fox", "sheep"),
    "number words": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    "days of the week": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "shapes": ("circle", "square", "triangle", "oval", "star", "heart", "diamond"),
}

# word -> (canonical one-sentence definition without the final period, key stems it must mention).
# Stems match word prefixes ("pull" matches "pulls"); no definition holds all the stems of another word.
DEFINITIONS = {
    "gravity": ("The force that pulls masses together", ("force", "pull")),
    "volcano": ("A mountain that erupts lava", ("mountain", "lava")),
    "democracy": ("Rule by the people through voting", ("people", "vot")),
    "ocean": ("A huge body of salt water", ("salt", "water")),
    "planet": ("A large body that orbits a star", ("orbit", "star")),
    "battery": ("A device that stores electric energy", ("stor", "energy")),
    "thermometer": ("A tool that measures temperature", ("measur", "temperature")),
    "island": ("Land surrounded by water", ("land", "surround")),
    "desert": ("A dry place with little rain", ("dry", "rain")),
    "glacier": ("A slow river of ice", ("slow", "ice")),
    "magnet": ("An object that attracts iron", ("attract", "iron")),
    "bridge": ("A path built across a river", ("across", "river")),
    "library": ("A building full of books to borrow", ("book", "borrow")),
    "telescope": ("A tool to see distant objects", ("see", "distant")),
    "vaccine": ("A medicine that builds immunity", ("medicine", "immun")),
    "river": ("Fresh water flowing to the sea", ("fresh", "flow")),
    "skeleton": ("The frame of bones in a body", ("frame", "bone")),
    "calendar": ("A chart of days and months", ("day", "month")),
    "umbrella": ("A cover that keeps off rain", ("cover", "rain")),
    "photosynthesis": ("How plants make food from light", ("plant", "light")),
    "oxygen": ("The gas we need to breathe", ("gas", "breath")),
}

_ARITHMETIC_RE = re.compile(r"Q: What is (\d) ?(\+|-|plus|minus) ?(\d)\?\s*A:")
_CAPITAL_RE = re.compile(r"Q: (?:What is|Name) the capital of ([A-Za-z]+)[?.]\s*A:")
_ITEMS_RE = re.compile(r"Q: (?:Name|List) (\d) ([a-z ]+)\.\s*A:")
_DEFINITION_RE = re.compile(r"Q: (?:Define ([a-z]+)\.|What does ([a-z]+) mean\?)\s*A:")


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for, recovered from its text.

    `key` is the expected number (arithmetic), the capital (capital), the category (items) or the word
    (definition); `n` is the number of items asked for (items only). `ideal_len` is the byte length of
    the longest concise correct answer, stripped: responses up to it are never "too long".
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
    if m := _ARITHMETIC_RE.fullmatch(prompt):
        a, op, b = int(m[1]), m[2], int(m[3])
        if op in ("+", "plus"):
            return Spec("arithmetic", str(a + b))
        return Spec("arithmetic", str(a - b)) if a >= b else None
    if (m := _CAPITAL_RE.fullmatch(prompt)) and m[1] in CAPITALS:
        return Spec("capital", CAPITALS[m[1]])
    if (m := _ITEMS_RE.fullmatch(prompt)) and m[2] in CATEGORIES and int(m[1]) in ITEM_COUNTS:
        return Spec("items", m[2], int(m[1]))
    if (m := _DEFINITION_RE.fullmatch(prompt)) and (word := m[1] or m[2]) in DEFINITIONS:
        return Spec("definition", word)
    return None


def concise_answer(spec: Spec, items: tuple[str, ...] | None = None) -> str:
    """The ideal response (leading space, final period); for items, `items` picks which members to name."""
    if spec.family == "items":
        return " " + ", ".join(items or CATEGORIES[spec.key][: spec.n]) + "."
    if spec.family == "definition":
        return f" {DEFINITIONS[spec.key][0]}."
    return f" {spec.key}."


@lru_cache(maxsize=256)
def _ideal_len(spec: Spec) -> int:
    if spec.family == "items":
        longest = tuple(sorted(CATEGORIES[spec.key], key=len)[-spec.n :])
        return len(concise_answer(spec, longest).strip().encode())
    return len(concise_answer(spec).strip().encode())
