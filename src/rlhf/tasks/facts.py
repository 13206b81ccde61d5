"""The closed world of the instruct task: prompt templates, knowledge tables and prompt parsing.

Both the generator (`instruct.py`) and the gold judge (`judge.py`) read these tables. The judge recovers
everything it needs from the prompt text alone (`parse_prompt`), so it can grade any response a policy
writes without hidden state.

The families suit a ~1M-parameter byte-level model trained for about a minute of CPU. Four compute their
answer from the prompt, so they generalise to inputs never seen in training; their prompts have a fixed
layout (one template, inputs of fixed length), so the answer sits at the same byte positions every time:

- echo: "Q: Copy the word: jam" -> "jam" (copy a three-letter word);
- upper: "Q: Spell in caps: jam" -> "JAM" (copy it in capitals);
- compare: "Q: Which is larger, 3 or 8?" -> "8" (the larger of two digits);
- successor: "Q: What comes after 47?" -> "48" (a two-digit number not ending in 9, plus one).

Two are small memorised tables, asked with two templates each:

- capital: "Q: What is the capital of France?" -> "Paris";
- items: "Q: Name 3 colors." -> "red, blue, green" (any n distinct members of a small category).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

FAMILIES = ("echo", "upper", "compare", "successor", "capital", "items")

TEMPLATES = {
    "echo": ("Q: Copy the word: {word}\nA:",),
    "upper": ("Q: Spell in caps: {word}\nA:",),
    "compare": ("Q: Which is larger, {a} or {b}?\nA:",),
    "successor": ("Q: What comes after {n}?\nA:",),
    "capital": ("Q: What is the capital of {country}?\nA:", "Q: Name the capital of {country}.\nA:"),
    "items": ("Q: Name {n} {category}.\nA:", "Q: List {n} {category}.\nA:"),
}
DIGITS = tuple(range(10))  # compare: two distinct digits
NUMBERS = tuple(n for n in range(10, 99) if n % 10 != 9)  # successor: two digits, no carry
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
    "animals": ("cat", "dog", "horse", "cow", "lion", "bear", "wolf"),
    "days": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "shapes": ("circle", "square", "triangle", "oval", "star", "heart"),
}

# Words to echo or spell in caps: three-letter lowercase nouns, none a category member or a word of the
# response templates and judge phrases ("sure", "not", ...), so a response mentions a listed word only
# when it answers with it.
WORDS = tuple(
    """
    ant arm ash axe bag bat bay bed bee bin bow box bud bun bus cab can cap car cod cot cub cup dam den dew
    dot ear eel egg elf elk emu eye fan fig fin fly fog fur gap gas gem gum gym hat hay hen hip hog hop hub
    hut ice ink ivy jam jar jaw jet jog jug key kid kit lab lad lap law leg lid lip log map mat mix mob mop
    mud mug nap net nib nut oak oar oil orb ore owl pad pan paw pea peg pen pet pie pig pin pit pod pot pub
    pun pup rag ram rat ray rib rim rod rug rum rye saw sea sip sob sun tab tag tap tar tea tie tin tip toe
    ton toy tub tux urn van vat vet vow wax web wig wok yak yam yap yew zip zoo
    """.split()
)

_ECHO_RE = re.compile(r"Q: Copy the word: ([a-z]+)\s*A:")
_UPPER_RE = re.compile(r"Q: Spell in caps: ([a-z]+)\s*A:")
_COMPARE_RE = re.compile(r"Q: Which is larger, (\d) or (\d)\?\s*A:")
_SUCCESSOR_RE = re.compile(r"Q: What comes after (\d\d)\?\s*A:")
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
    if (m := _ECHO_RE.fullmatch(prompt)) and m[1] in _WORD_SET:
        return Spec("echo", m[1])
    if (m := _UPPER_RE.fullmatch(prompt)) and m[1] in _WORD_SET:
        return Spec("upper", m[1])
    if (m := _COMPARE_RE.fullmatch(prompt)) and m[1] != m[2]:
        return Spec("compare", max(m[1], m[2]), int(min(m[1], m[2])))
    if (m := _SUCCESSOR_RE.fullmatch(prompt)) and int(m[1]) in NUMBERS:
        return Spec("successor", str(int(m[1]) + 1))
    if (m := _CAPITAL_RE.fullmatch(prompt)) and m[1] in CAPITALS:
        return Spec("capital", CAPITALS[m[1]])
    if (m := _ITEMS_RE.fullmatch(prompt)) and m[2] in CATEGORIES and int(m[1]) in ITEM_COUNTS:
        return Spec("items", m[2], int(m[1]))
    return None


def answer_text(spec: Spec) -> str:
    """The bare answer as it should be written: "jam", "JAM", "8", "48", "Paris"; items: the first n."""
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
