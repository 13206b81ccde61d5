"""User reward functions for the RL stages: `--reward-fn path/to/file.py:function` or `pkg.mod:function`.

A reward function is plain Python, called once per batch of rollouts as

    fn(prompts: list[str], completions: list[str], **columns) -> list[float]

where `columns` holds the prompt file's other columns (e.g. `answer`), one value per prompt, aligned with
`prompts` - the convention of TRL's GRPOTrainer reward functions, so verifiable rewards (compare the
completion with a reference answer) need no reward model. A function that ignores columns should take
`**kwargs`. With conversational prompts (lists of `{"role", "content"}` messages) each prompt is its messages and
each completion is `[{"role": "assistant", "content": text}]`, as TRL passes them.

Everything that can go wrong here is the user's to fix (a bad path, an exception in their code, a score
that is not a finite number), so every error is a one-line `UserError` that names the function and, where
one is involved, the prompt.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf.config import BUILTIN_REWARD_FNS
from rlhf.errors import UserError

_PROMPT_CHARS = 60  # how much of a prompt an error message quotes
_FORM = "write path/to/file.py:function or package.module:function"


def is_function_spec(spec: str) -> bool:
    """Whether `--reward-fn spec` names a user function ("file.py:fn", "pkg.mod:fn"), not a built-in."""
    return ":" in spec and spec not in BUILTIN_REWARD_FNS


@dataclass(frozen=True)
class RewardFunction:
    """A loaded user reward function; `name` is the spec as the user wrote it, used in every error message."""

    name: str
    fn: Callable[..., Any]

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], columns: dict[str, list] | None = None
    ) -> torch.Tensor:
        """Scores of `completions` as a float32 CPU tensor of shape (len(prompts),).

        Calls `fn(prompts, completions, **columns)`; raises `UserError` when the function raises or returns
        anything but one finite number per completion.
        """
        n = len(prompts)
        if len(completions) != n:
            raise ValueError(f"{len(completions)} completions for {n} prompts")
        columns = columns or {}
        for key, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column {key!r} has {len(values)} values for {n} prompts")
        # The prompt file's columns become keyword arguments, so one named like a positional argument would
        # collide with it; say which column to rename instead of reporting the TypeError it causes.
        clash = [key for key in ("prompts", "completions") if key in columns]
        if clash:
            raise UserError(
                f"the prompt file has a column named {clash[0]!r}, which clashes with the argument of that "
                f"name of reward function {self.name}; rename the column"
            )
        if n and isinstance(prompts[0], list):  # conversational prompts get conversational completions (TRL)
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        try:
            result = self.fn(list(prompts), list(completions), **columns)
        except Exception as e:  # anything the user's code raises is reported as their error, in one line
            first = f", first: {_short(prompts[0])}" if n else ""
            # A TypeError here is most often a parameter list that does not match the columns passed.
            hint = (
                f"; columns passed as keywords: {', '.join(columns) or 'none'}"
                if isinstance(e, TypeError)
                else ""
            )
            raise UserError(
                f"reward function {self.name} raised {_exception(e)} (batch of {n} prompts{first}){hint}"
            ) from None
        scores = self._to_tensor(result)
        if scores.numel() != n:
            raise UserError(
                f"reward function {self.name} returned {scores.numel()} scores for {n} completions; "
                "return one number per completion, in order"
            )
        bad = (~torch.isfinite(scores)).nonzero()
        if len(bad):
            i = int(bad[0])
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(
                f"reward function {self.name} returned {_value_at(result, i)} at index {i}{more}, for prompt "
                f"{_short(prompts[i])}; every score must be a finite number"
            )
        return scores

    def _to_tensor(self, result: Any) -> torch.Tensor:
        """`result` as a float32 1-D tensor, or a UserError saying what the function returned instead."""
        must = "it must return a list of numbers, one per completion"
        if isinstance(result, torch.Tensor | np.ndarray):
            kind = "a tensor" if isinstance(result, torch.Tensor) else "an array"
            if result.ndim != 1:
                shape = tuple(result.shape)
                raise UserError(f"reward function {self.name} returned {kind} of shape {shape}; {must}")
            if not _numeric_dtype(result):
                raise UserError(
                    f"reward function {self.name} returned {kind} of dtype {result.dtype}; {must}"
                )
            if isinstance(result, np.ndarray):
                result = torch.from_numpy(np.ascontiguousarray(result))
            return result.detach().to("cpu", torch.float32)
        if not isinstance(result, list | tuple):
            shown = "None" if result is None else f"a {type(result).__name__} ({_clip(repr(result))})"
            raise UserError(f"reward function {self.name} returned {shown}; {must}")
        values = []
        for i, value in enumerate(result):
            number = _number(value)
            if number is None:
                raise UserError(
                    f"reward function {self.name} returned a {type(value).__name__} at index {i} "
                    f"({_clip(repr(value))}); every score must be a number"
                )
            values.append(number)
        return torch.tensor(values, dtype=torch.float32)


def load_reward_fn(spec: str) -> RewardFunction:
    """The function that `spec` ("path/to/file.py:function" or "package.module:function") names.

    A file is imported by its path under a private module name (its directory is not added to
    `sys.path`); a module is imported by name. Raises `UserError` naming the spec when the file or module
    is missing, importing it raises, or it has no callable of that name.
    """
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise UserError(f"--reward-fn {spec!r} does not name a function; {_FORM}")
    # A path separator or a .py suffix can only be a file; anything else is a dotted module name.
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    module = _import_file(spec, target) if is_file else _import_module(spec, target)
    where = f"{target}" if is_file else f"module {target}"
    if not hasattr(module, attr):
        raise UserError(f"reward function {spec}: {where} has no function {attr!r}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise UserError(
            f"reward function {spec}: {attr!r} in {where} is a {type(fn).__name__}, not a function"
        )
    return RewardFunction(spec, fn)


def _import_file(spec: str, target: str) -> Any:
    path = Path(target)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
        what = "is a directory, not a .py file" if path.is_dir() else "not found"
        raise UserError(f"reward function {spec}: file {target} {what}{where}")
    # A private, path-derived module name: two files both called rewards.py must not replace each other,
    # nor shadow a real module named like the file.
    digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=6).hexdigest()
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_rlhf_reward_fn_{stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"reward function {spec}: cannot import {target} as Python; give it a .py name")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before it runs, as a normal import is: dataclasses and pickling in the file look it up.
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        del sys.modules[name]
        raise UserError(f"reward function {spec}: importing {target} raised {_exception(e)}") from None
    return module


def _import_module(spec: str, target: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        # Only the module itself (or a package above it) missing means a wrong name; a missing module that it
        # imports is an error inside it, reported like any other.
        if e.name is not None and (target == e.name or target.startswith(e.name + ".")):
            raise UserError(
                f"reward function {spec}: no module named {target}; install it or add its directory to "
                "PYTHONPATH, or for a file write path/to/file.py:function"
            ) from None
        raise UserError(f"reward function {spec}: importing {target} raised {_exception(e)}") from None
    except (Exception, SystemExit) as e:
        raise UserError(f"reward function {spec}: importing {target} raised {_exception(e)}") from None


def _exception(e: BaseException) -> str:
    """'TypeName: first line of the message', or the type name alone when the message is empty."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _short(text) -> str:
    """A one-line repr of `text` (or of a conversation's last message), cut to about `_PROMPT_CHARS` characters."""
    if isinstance(text, list) and text and isinstance(text[-1], dict):
        text = str(text[-1].get("content", ""))
    text = str(text)
    if len(text) > _PROMPT_CHARS:
        return repr(text[:_PROMPT_CHARS] + "...")
    return repr(text)


def _clip(text: str) -> str:
    """`text` cut to about `_PROMPT_CHARS` characters."""
    return text if len(text) <= _PROMPT_CHARS else text[:_PROMPT_CHARS] + "..."


def _numeric_dtype(array: torch.Tensor | np.ndarray) -> bool:
    """Integer or floating point, not bool or complex: the dtypes a score can be read from."""
    if isinstance(array, torch.Tensor):
        return array.dtype != torch.bool and not array.dtype.is_complex
    return array.dtype.kind in "iuf"


def _number(value: Any) -> float | None:
    """`value` as a float if it is one number (int, float, numpy scalar, 0-d tensor), else None.

    Booleans are refused: a True where a score belongs is more likely a bug than a reward of 1.
    """
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, numbers.Real):  # int, float and the numpy integer and floating scalars
        return float(value)
    if isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 0 and _numeric_dtype(value):
        return float(value.item())
    return None


def _value_at(result: Any, i: int) -> str:
    """The non-finite score at index `i` as the function returned it (1e300 is not shown as float32 inf)."""
    value = result[i]
    number = float(value.item()) if isinstance(value, torch.Tensor | np.generic | np.ndarray) else value
    if isinstance(number, float) and math.isfinite(number):
        return f"{number!r}, too large for float32,"
    return repr(float(number))
