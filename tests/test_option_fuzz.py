"""Options fuzzed (issue 20): every numeric option of every command, set to 0, -1, nan, inf or 1e12, is either
accepted or refused with one line `error: ...` naming it - never a traceback, never tyro's multi-line box.

The cases are generated from the config dataclasses of `cli.COMMANDS` (fields walked recursively: --optim.*,
--arch.*, --task.*, tuples like --optim.betas, lists like --data-weights, Optional numbers), so a new option is
fuzzed without touching this file, and `test_every_numeric_option_has_a_bound` fails until the option gets a bound
in `config.OPTION_BOUNDS`.

Every case is parsed in-process, as `cli.main` does. tyro rebuilds its parser from the whole dataclass on every
call (~0.1 s for `rlhf ppo`), so the default suite parses each distinct option once (the same field with the same
bound and default in several commands - --seed in all 20 - is fuzzed in the cheapest of them), and an int option
with 0, -1, 1e12 and 10**12 (nan and inf meet the same tyro refusal as 1e12). The slow tests parse the whole
(command x option x value) matrix, and run tiny `sft`, `reward`, `dpo` and `grpo` with each value they accept,
each in a subprocess with a timeout: no crash and no hang.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from rlhf import cli
from rlhf import config as C
from rlhf.errors import UserError
from tiny_runs import TINY_REWARD, TINY_SFT

VALUES = ("0", "-1", "nan", "inf", "1e12")
# 1e12 spelled as an integer: tyro refuses the token "1e12" for an int option, the option's cap must refuse this.
BIG_INT = str(10**12)


@dataclass(frozen=True)
class Option:
    flag: str  # as the user types it: --optim.grad-accum
    owner: type  # the dataclass holding the field: the command's, or a nested one (OptimConfig for --optim.*)
    name: str
    number: type  # int or float
    arity: int | None  # None: one value; n: a tuple of n values; 0: a list (given one value here)

    def argv(self, value: str) -> list[str]:
        return [self.flag, *[value] * (self.arity or 1)]


def _kind(hint) -> tuple[type, int | None] | None:
    """(int/float, arity) of a numeric field type, walked here independently of config.numeric_kind."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _kind(inner[0]) if len(inner) == 1 else None
    if origin is tuple and args and Ellipsis not in args and all(a in (int, float) for a in args):
        return args[0], len(args)
    if origin in (list, tuple) and args and args[0] in (int, float):
        return args[0], 0
    return (hint, None) if hint in (int, float) else None


def numeric_options(cls: type, prefix: str = "") -> list[Option]:
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            found += numeric_options(type(default), f"{prefix}{f.name}.")
            continue
        kind = _kind(hints[f.name])
        if kind is not None:
            found.append(Option("--" + (prefix + f.name).replace("_", "-"), cls, f.name, *kind))
    return found


OPTIONS = {name: numeric_options(command.cfg) for name, command in cli.COMMANDS.items()}


def values_for(option: Option, every: bool = True) -> tuple[str, ...]:
    """The fuzzed values; for an int option 1e12 also spelled as an integer. Without `every`, an int option skips
    nan and inf: tyro refuses them exactly as it refuses the token 1e12 (not an int literal), tested for each."""
    if option.number is not int:
        return VALUES
    return (*VALUES, BIG_INT) if every else ("0", "-1", "1e12", BIG_INT)


def _default(command: str, option: Option):
    obj = C.declared_defaults(cli.COMMANDS[command].cfg)
    for part in option.flag[2:].replace("-", "_").split("."):
        obj = getattr(obj, part)
    return obj


def distinct_options() -> dict[str, list[Option]]:
    """Each option once, in the command with the fewest options (the cheapest parse: tyro builds its parser from
    the whole dataclass on every call, ~0.1 s for `rlhf ppo`) among those where it is the same field, with the
    same bound and the same default: --seed of 20 commands is one case, --optim.lr of sft and of reward two."""
    chosen: dict[tuple, tuple[str, Option]] = {}
    for command in sorted(cli.COMMANDS, key=lambda name: len(OPTIONS[name])):
        for o in OPTIONS[command]:
            declaring = next(
                k for k in reversed(o.owner.__mro__) if o.name in vars(k).get("__annotations__", {})
            )
            key = (declaring, o.name, C.bound_for(o.owner, o.name), repr(_default(command, o)))
            chosen.setdefault(key, (command, o))
    by_command: dict[str, list[Option]] = {}
    for command, o in chosen.values():
        by_command.setdefault(command, []).append(o)
    return by_command


DISTINCT = distinct_options()


def parse(argv: list[str], capsys) -> tuple[object | None, str | None, str]:
    """(config, None) when accepted, (None, the line `cli.main` prints) when refused; plus what parsing printed."""
    try:
        _, cfg = cli.parse(argv)
        line = None
    except UserError as e:
        cfg, line = None, f"error: {e}"
    except SystemExit as e:  # tyro exiting on its own: its box, not our line
        pytest.fail(f"{argv}: SystemExit({e.code}) instead of a UserError: {capsys.readouterr().err!r}")
    return cfg, line, capsys.readouterr().err


def check_case(command: str, option: Option, value: str, base: list[str], capsys) -> tuple[str, str | None]:
    """('ok' | 'refused', None) for a case that behaves, or (..., what is wrong)."""
    argv = [*command.split(), *base, *option.argv(value)]
    cfg, line, printed = parse(argv, capsys)
    if printed:
        return "?", f"{argv}: parsing printed {printed!r}"
    if line is None:
        if value in ("nan", "inf") or (option.number is int and value in ("1e12", BIG_INT)):
            return "ok", f"{argv}: accepted (a non-finite value, or an int far beyond any cap)"
        return "ok", None
    if "\n" in line or "Traceback" in line:
        return "refused", f"{argv}: not one line: {line!r}"
    if option.flag not in line:
        return "refused", f"{argv}: the error does not name {option.flag}: {line!r}"
    return "refused", None


# ------------------------------------------------------------------------------------------------ every option
def test_every_command_has_numeric_options_found():
    """The walk finds options at every depth and of every shape, so an empty fuzz cannot pass by accident."""
    flags = {o.flag for opts in OPTIONS.values() for o in opts}
    assert {
        "--seed",
        "--optim.lr",
        "--optim.betas",
        "--arch.n-embd",
        "--task.n-train",
        "--data-weights",
    } <= flags
    assert all(OPTIONS[name] for name in cli.COMMANDS)  # --seed and --threads at least
    assert next(o for o in OPTIONS["sft"] if o.flag == "--optim.betas").arity == 2


def test_every_numeric_option_has_a_bound():
    """A new numeric option needs an entry in config.OPTION_BOUNDS (else it is only checked for being finite);
    an int one needs a finite cap, so that a typo like 1000000000000 cannot allocate or loop for ever."""
    missing, uncapped, unseen = [], [], []
    for name, options in OPTIONS.items():
        for o in options:
            bound = C.bound_for(o.owner, o.name)
            if bound is None:
                missing.append(f"{name} {o.flag} ({o.owner.__name__}.{o.name})")
            elif o.number is int and not (math.isfinite(bound.hi) and bound.hi < 10**12):
                uncapped.append(f"{name} {o.flag}")
            # The validation must see the same options this walk finds.
            if C.numeric_kind(typing.get_type_hints(o.owner)[o.name]) is None:
                unseen.append(f"{name} {o.flag}")
    assert not missing, f"no bound in config.OPTION_BOUNDS for: {', '.join(sorted(set(missing)))}"
    assert not uncapped, f"int options without a cap below 1e12: {', '.join(uncapped)}"
    assert not unseen, f"config.validate does not check: {', '.join(unseen)}"


def test_defaults_are_valid():
    """Every documented default (including the 0 = auto / off ones) passes the validation it now goes through."""
    for name in cli.COMMANDS:
        cli.parse(name.split())


def fuzz(command: str, options: list[Option], every: bool, capsys) -> None:
    failures, counts = [], {"ok": 0, "refused": 0}
    for option in options:
        for value in values_for(option, every):
            outcome, problem = check_case(command, option, value, [], capsys)
            counts[outcome] = counts.get(outcome, 0) + 1
            if problem:
                failures.append(problem)
    assert not failures, "\n".join(failures)
    assert counts["refused"] > 0  # -1 or 1e12 at least


@pytest.mark.parametrize("command", list(DISTINCT))
def test_numeric_options_fuzzed(command, capsys):
    fuzz(command, DISTINCT[command], every=False, capsys=capsys)


@pytest.mark.slow
@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_numeric_options_fuzzed_in_every_command(command, capsys):
    """The whole matrix: every option of every command with every value (~1,550 parses, ~3 minutes)."""
    fuzz(command, OPTIONS[command], every=True, capsys=capsys)


def test_cli_main_refuses_in_one_line_with_exit_code_2(capsys):
    """What users see: `cli.main` exits 2 with one `error:` line, both for a token tyro cannot read as an int and
    for a number outside its bound."""
    for argv, flag in [
        (["sft", "--batch-size", "1e12"], "--batch-size"),
        (["sft", "--batch-size", BIG_INT], "--batch-size"),
        (["grpo", "--optim.betas", "0.9", "nan"], "--optim.betas"),
        (["reward", "--max-length", "-1"], "--max-length"),
        (["sample", "--top-p", "0"], "--top-p"),
        (["sft", "--no-such-option", "3"], "--no-such-option"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2, (argv, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith("error: ") and flag in err, (argv, err)


def test_without_the_tyro_hook_the_box_is_read_back_as_one_line(monkeypatch, capsys):
    """Another tyro (no parse-error hook): the first section of its error box becomes the line, still naming the
    option, and nothing of the box reaches stderr."""
    monkeypatch.setattr(cli, "_on_parse_error", None)
    for argv, flag in [
        (["sft", "--batch-size", "1e12"], "--batch-size"),
        (["sft", "--device", "gpu"], "--device"),
    ]:
        with pytest.raises(UserError) as e:
            cli.parse(argv)
        assert flag in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert capsys.readouterr().err == ""


def test_relations_between_options_are_one_line_errors():
    """Options each in range that cannot go together are refused at parse time, naming both, instead of failing
    inside a stage (an assertion deep in the model, or after training)."""
    for argv, words in [
        (["sft", "--arch.n-embd", "30", "--arch.n-head", "4"], ("--arch.n-embd", "--arch.n-head")),
        (["sft", "--arch.n-layer", "1000", "--arch.n-embd", "8192"], ("--arch.n-layer", "parameters")),
        (["sft", "--max-length", "32", "--max-new-tokens", "48"], ("--max-new-tokens", "--max-length")),
        (["sft", "--arch.block-size", "64"], ("--max-length", "--arch.block-size")),
        (["dpo", "--data-weights", "1", "2"], ("--data-weights", "--data")),
        (["ppo", "--kl-target", "6", "--kl-horizon", "12"], ("--kl-horizon", "--rollout-batch")),
    ]:
        with pytest.raises(UserError) as e:
            cli.parse(argv)
        assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), (argv, str(e.value))
    # ... and the same options in agreement are fine.
    cli.parse(["sft", "--arch.block-size", "64", "--max-length", "64", "--gold-samples", "0"])
    cli.parse(["sft", "--max-length", "32", "--max-new-tokens", "48", "--gold-samples", "0"])
    cli.parse(["ppo", "--kl-target", "6", "--kl-horizon", "13"])


def test_configs_built_in_code_are_validated_too():
    """Stages and experiments build configs directly (rlhf demo builds SFTConfig, ...): same checks, same words."""
    with pytest.raises(UserError, match=r"--optim\.lr must be a finite number in \[0, 1\], got nan"):
        C.SFTConfig(optim=C.OptimConfig(lr=math.nan))
    with pytest.raises(UserError, match="--kl-horizon must be an integer in"):
        C.PPOConfig(kl_horizon=0)
    assert C.RewardConfig(max_length=0).max_length == 256  # 0 = auto still derives


# ------------------------------------------------------------------------------------------------ real runs
RL = [
    "--episodes", "8", "--rollout-batch", "4", "--samples-per-prompt", "4", "--response-length", "8",
    "--task.n-train", "32", "--optim.lr", "1e-3", "--no-progress", "--threads", "1",
]  # fmt: skip
DPO = [
    "--task.n-train", "48", "--task.n-eval", "16", "--batch-size", "8", "--max-steps", "2", "--eval-every", "2",
    "--gold-samples", "4", "--max-new-tokens", "6", "--no-progress", "--threads", "1",
]  # fmt: skip
TIMEOUT = (
    240  # a tiny run takes seconds; one that has not ended by then hangs (or crawls: a bound is missing)
)


@pytest.mark.slow
def test_accepted_extreme_values_really_run(tiny_sft, tiny_reward, tmp_path, capsys):
    """Every value the parser accepts for an option of sft / reward / dpo / grpo, run for real on tiny settings:
    the run ends by itself (timeout = a hang), and either succeeds or stops with one `error:` line naming the
    option - never a traceback."""
    bases = {
        "sft": [*TINY_SFT, "--max-steps", "3"],
        "reward": ["--init", str(tiny_sft), *TINY_REWARD, "--max-steps", "3"],
        "dpo": ["--sft", str(tiny_sft), *DPO],
        "grpo": ["--sft", str(tiny_sft), "--reward", str(tiny_reward), *RL],
    }
    cases = []
    for command, base in bases.items():
        for option in OPTIONS[command]:
            for value in VALUES:
                outcome, problem = check_case(command, option, value, base, capsys)
                assert problem is None, problem
                if outcome == "ok":
                    cases.append((command, option, value, base))
    assert len(cases) > 40  # the 0 / -1 / 1e12 values that mean something (auto, off, a big coefficient)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(i: int) -> str | None:
        command, option, value, base = cases[i]
        argv = [*command.split(), *base, *option.argv(value), "--out", str(tmp_path / f"run{i}")]
        try:
            p = subprocess.run(
                [sys.executable, "-m", "rlhf", *argv],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return f"rlhf {' '.join(argv)}: still running after {TIMEOUT}s"
        errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
        if "Traceback" in p.stderr or p.returncode not in (0, 2):
            return f"rlhf {' '.join(argv)}: exit {p.returncode}\n{p.stderr[-3000:]}"
        if p.returncode == 2 and not (len(errors) == 1 and option.flag in errors[0]):
            return f"rlhf {' '.join(argv)}: exit 2 without one error line naming {option.flag}: {errors}"
        return None

    with ThreadPoolExecutor(max_workers=2) as pool:  # 2 cores, one thread per run
        problems = [p for p in pool.map(run, range(len(cases))) if p]
    assert not problems, f"{len(problems)} of {len(cases)} runs:\n" + "\n\n".join(problems)
