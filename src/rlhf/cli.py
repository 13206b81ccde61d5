"""`rlhf <command> [options]`: every command's options are generated from its config dataclass (tyro).

This is the only place that wires stages together. A `UserError` becomes one line `error: ...` on stderr and
exit status 2 - no traceback for mistakes the user can fix.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import sys
from dataclasses import dataclass

import tyro

from rlhf import config as C
from rlhf import run_dir, stop
from rlhf.allocator import keep_freed_memory
from rlhf.distributed import is_main, lost_contact
from rlhf.errors import UserError

try:  # tyro >= 1.0: a hook sees each parse failure (a private module, hence the fallback in _tyro_cli)
    from tyro._errors import on_parse_error as _on_parse_error
except ImportError:  # pragma: no cover - older tyro
    _on_parse_error = None


@dataclass(frozen=True)
class Command:
    cfg: type
    runner: str  # "module:function", imported only when the command runs (keeps --help fast)
    summary: str


COMMANDS: dict[str, Command] = {
    "sft": Command(C.SFTConfig, "rlhf.stages.sft:train_sft", "Stage 1: supervised fine-tuning on responses"),
    "reward": Command(
        C.RewardConfig, "rlhf.stages.reward:train_reward", "Stage 2: reward model on preference pairs"
    ),
    "reward eval": Command(
        C.RewardEvalConfig, "rlhf.stages.reward:run_reward_eval", "Accuracy + calibration of a reward model"
    ),
    "ppo": Command(
        C.PPOConfig,
        "rlhf.stages.ppo:train_ppo",
        "Stage 3: PPO (GAE + value model), KL penalty to the SFT reference",
    ),
    "grpo": Command(
        C.GRPOConfig, "rlhf.stages.ppo:train_ppo", "Stage 3: GRPO (group-normalised scores, KL in the loss)"
    ),
    "rloo": Command(C.RLOOConfig, "rlhf.stages.ppo:train_ppo", "Stage 3: RLOO (leave-one-out baseline)"),
    "dpo": Command(
        C.DPOConfig,
        "rlhf.stages.dpo:train_dpo",
        "Offline preference optimisation: DPO, IPO, hinge, SimPO, ...",
    ),
    "compare": Command(
        C.CompareConfig, "rlhf.eval.compare:run_compare", "SFT vs PPO: gold, proxy, KL, samples"
    ),
    "demo": Command(C.DemoConfig, "rlhf.demo:run_demo", "The whole pipeline on the built-in task in minutes"),
    "report": Command(
        C.ReportConfig, "rlhf.eval.report:run_report", "One self-contained HTML report of a run"
    ),
    "sample": Command(C.SampleConfig, "rlhf.stages.sample:run_sample", "Generate from a checkpoint"),
    "data validate": Command(
        C.DataValidateConfig, "rlhf.stages.data_validate:run_validate", "Check a data file"
    ),
    "export": Command(
        C.ExportConfig, "rlhf.export:run_export", "A checkpoint as a Hugging Face model directory"
    ),
    "import-hf": Command(
        C.ImportHFConfig, "rlhf.export:run_import", "A local Hugging Face GPT-2 as a built-in GPT policy"
    ),
    # Experiments (docs/experiments.md): each wires the stages above and ends with a report.
    "experiment length-hack": Command(
        C.LengthHackConfig, "rlhf.experiments.length_hack:run", "PPO on len(response)/100, with/without KL"
    ),
    "experiment kl-sweep": Command(
        C.KLSweepConfig, "rlhf.experiments.kl_sweep:run", "PPO at several KL betas: proxy, gold, KL"
    ),
    "experiment multi-objective": Command(
        C.MultiObjectiveConfig,
        "rlhf.experiments.multi_objective:run",
        "Helpful + concise reward models vs helpful alone",
    ),
    "experiment pooling": Command(
        C.PoolingConfig, "rlhf.experiments.pooling:run", "Reward model: last-token vs mean pooling"
    ),
    "experiment calibration": Command(
        C.CalibrationConfig, "rlhf.experiments.calibration:run", "Reward margins + ECE: train vs unseen pairs"
    ),
    "experiment overoptimization": Command(
        C.OverOptimizationConfig,
        "rlhf.experiments.overoptimization:run",
        "Gold and proxy reward against sqrt(KL)",
    ),
    "experiment ensemble": Command(
        C.EnsembleExperimentConfig,
        "rlhf.experiments.ensemble:run",
        "Over-optimisation curve: one reward model vs ensembles (mean, min, mean-std)",
    ),
    "experiment iterated": Command(
        C.IteratedConfig,
        "rlhf.experiments.iterated:run",
        "Iterated RM retraining on labelled policy samples",
    ),
    "experiment biases": Command(
        C.BiasesConfig,
        "rlhf.experiments.biases:run",
        "One arm per annotator bias vs a control: RM learns it, PPO exploits it",
    ),
    "experiment algorithms": Command(
        C.AlgorithmsConfig,
        "rlhf.experiments.algorithms:run",
        "The bake-off: PPO, GRPO, RLOO, REINFORCE++, DPO, best-of-N on one budget, gold vs KL",
    ),
}


POSITIONAL = {"data validate": "--file", "report": "--run-dir"}


def _usage() -> str:
    width = max(len(k) for k in COMMANDS)
    lines = [
        "usage: rlhf <command> [options]   (rlhf <command> --help for every option)",
        "",
        "The RLHF pipeline: SFT -> reward model -> PPO / GRPO / RLOO, on a laptop CPU first.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return "\n".join(lines)


def _find_command(argv: list[str]) -> tuple[str, list[str]]:
    """The longest registered command name that prefixes argv (so `reward eval` wins over `reward`)."""
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in COMMANDS:
            return name, argv[n:]
    if argv[0] == "experiment":
        names = ", ".join(k.split(" ", 1)[1] for k in COMMANDS if k.startswith("experiment "))
        raise UserError(f"rlhf experiment needs a name: one of {names}")
    raise UserError(f"unknown command '{' '.join(argv[:2])}'; run `rlhf --help` for the list")


def _split_config_flag(args: list[str]) -> tuple[str | None, list[str]]:
    """Pull `--config FILE` out first so the file's values can become tyro's defaults (defaults < file < flags)."""
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1], args
        if a.startswith("--config="):
            return a.split("=", 1)[1], args
    return None, args


def parse(argv: list[str]):
    """(command name, resolved config) for a command line."""
    name, rest = _find_command(argv)
    cmd = COMMANDS[name]
    config_file, rest = _split_config_flag(rest)
    # Unresolved defaults (no __post_init__ yet): tyro builds the final config, deriving values exactly once.
    if config_file:
        default = C.load_config_file(cmd.cfg, config_file, resolve=False)
    else:
        default = C.declared_defaults(cmd.cfg)
    # One positional argument where a command has one (`rlhf data validate FILE`, `rlhf report RUN_DIR`).
    if name in POSITIONAL and rest and not rest[0].startswith("-"):
        rest = [POSITIONAL[name], rest[0], *rest[1:]]
    cfg = _tyro_cli(cmd.cfg, rest, default, f"rlhf {name}", cmd.cfg.__doc__)
    return name, cfg


def _tyro_cli(cls: type, args: list[str], default, prog: str, description: str | None):
    """tyro.cli, with a rejected command line as one `UserError` line.

    tyro reports a value it cannot parse (`--batch-size 1e12` is not an integer), an unknown option or a bad
    choice in a box of many lines on stderr, then exits 2; the CLI promises one line. tyro's parse-error hook
    gives the exact message; where it is missing (another tyro) or does not know the event, the box's first
    section is read back instead.
    """
    captured = io.StringIO()
    hook = _on_parse_error(_one_line_parse_error) if _on_parse_error else contextlib.nullcontext()
    try:
        with contextlib.redirect_stderr(captured), hook:
            cfg = tyro.cli(cls, args=args, default=default, prog=prog, description=description)
    except SystemExit as e:
        if e.code in (0, None):  # --help (printed on stdout)
            sys.stderr.write(captured.getvalue())
            raise
        line = _box_first_section(captured.getvalue())
        raise UserError(line or f"cannot parse the options; `{prog} --help` lists them") from None
    sys.stderr.write(captured.getvalue())  # warnings while parsing stay visible
    return cfg


# Python's own words for a token int() / float() cannot read, as the CLI says them.
_CONVERSION_ERRORS = (
    (re.compile(r"invalid literal for int\(\) with base 10: (.*)"), "an integer"),
    (re.compile(r"could not convert string to float: (.*)"), "a number"),
)


def _one_line_parse_error(event) -> None:
    """tyro's parse-error hook: raise the failure as one `UserError` line; unknown events fall through."""
    kind = type(event).__name__
    names = getattr(getattr(getattr(event, "argument", None), "lowered", None), "name_or_flags", None)
    flag = "/".join(names) if names else None
    message = getattr(event, "message", None)
    if kind == "InstantiationFailure" and flag and message:
        for pattern, what in _CONVERSION_ERRORS:
            found = pattern.fullmatch(message)
            if found:
                raise UserError(f"{flag} must be {what}, got {found.group(1)}")
        raise UserError(f"{flag}: {message}")
    if kind == "InvalidChoice" and flag:
        raise UserError(f"{flag} must be one of {', '.join(event.choices)}, got {event.value!r}")
    if kind == "UnrecognizedArgs":
        raise UserError(
            f"unknown option(s) {' '.join(event.tokens)}; `{event.prog} --help` lists the options"
        )


def _box_first_section(text: str) -> str:
    """The first section of a tyro error box as one line: the rows after the title, down to the next rule, borders
    removed. The box is drawn in Unicode (title in the top border) or, on a non-UTF-8 stream, in ASCII (title on
    its own row, then a rule)."""
    rows = []
    lines = [
        line.strip().strip("│|╭╮╰╯").strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
    ]
    for body in [line for line in lines if line][1:]:  # [0] is the title
        if body.strip("─━-+ "):
            rows.append(body)
        elif rows:  # a rule after the message ends it
            break
    return " ".join(rows)


def run(argv: list[str]):
    """Parse and run one command; returns its summary dict."""
    name, cfg = parse(argv)
    module, func = COMMANDS[name].runner.split(":")
    done = False
    try:
        summary = getattr(importlib.import_module(module), func)(cfg)
        done = True
        return summary
    finally:  # --overwrite: the replaced run goes only now, or comes back if this one failed before a checkpoint
        run_dir.finish(done)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    if argv[0] == "--version":
        from rlhf import __version__

        print(__version__)
        return
    keep_freed_memory()  # every command: steps reuse freed memory instead of faulting in fresh pages
    stop.install()  # SIGTERM / SIGINT: a training loop finishes its step and writes a resume checkpoint
    try:
        run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        why = lost_contact(e)
        if not why:
            raise
        # Another process or node died or stopped answering (--dist-timeout): one line, not a gloo traceback.
        print(f"error: {why}", file=sys.stderr)
        sys.exit(1)
    except stop.Stopped as e:
        message = str(e)
        if "resume checkpoint: " in message and not message.endswith("None"):
            again = argv if "--resume" in argv else [*argv, "--resume"]
            message += f"\ncontinue with: rlhf {shlex.join(again)}"
        if is_main():  # under torchrun: one message, from rank 0
            print(message, file=sys.stderr)
        sys.exit(e.exit_code)
