"""One run per directory.

A command refuses an `--out` that already holds another run's outputs (running twice into one directory used to
mix two runs' metrics.jsonl without a word), unless `--resume` continues that run or `--overwrite` replaces it.

`--overwrite` never deletes first: the old run's files move into `OUT/.previous-run/` and are deleted only once
the new run has written its first checkpoint (or finished, for commands that write none). If the new run fails
before that, its partial files are removed and the old run's files are put back, so a mistyped option costs
nothing. A `.previous-run/` left by a run that was killed outright is never deleted silently: the next
`--overwrite` asks the user to look at it first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rlhf.errors import UserError

# What a command writes at the top of its --out (a demo or experiment: inside its stage directories).
MARKERS = ("summary.json", "metrics.jsonl", "model.safetensors", "config.json", "resume")
ASIDE = ".previous-run"

_pending: dict[Path, Path] = {}  # out -> where its previous run waits until the new one has a checkpoint


def _markers(directory: Path, depth: int) -> list[str]:
    """Run outputs in `directory` or (down to `depth` levels) its sub-directories, as paths relative to it."""
    found = [m for m in MARKERS if (directory / m).exists()]
    if depth and not found:
        for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += [f"{sub.name}/{m}" for m in _markers(sub, depth - 1)]
    return found


def _inside_pending(out: Path) -> bool:
    """Is `out` inside a directory this process is overwriting (a demo's stage directory)? Then it is fresh."""
    return any(out == p or p in out.parents for p in _pending)


def claim(out: Path, resume: bool, overwrite: bool) -> None:
    """Make `out` this run's directory, or raise a one-line UserError saying why not and what to pass."""
    out = Path(out).absolute()
    if not out.exists() or _inside_pending(out):
        out.mkdir(parents=True, exist_ok=True)
        return
    if not out.is_dir():
        raise UserError(f"{out}: --out is a file, not a directory; choose another --out")
    found = _markers(out, depth=2)  # stage dirs of a demo (sft/...), sub-runs of an experiment (runs/x/...)
    if not found or resume:
        return
    if not overwrite:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise UserError(
            f"{out}: already holds a run ({shown}); pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )
    aside = out / ASIDE
    if aside.exists():
        raise UserError(
            f"{aside}: holds a run set aside by an earlier --overwrite that never finished; move or delete it, "
            "then run again"
        )
    aside.mkdir()
    for entry in sorted(out.iterdir()):
        if not entry.name.startswith("."):
            entry.rename(aside / entry.name)
    _pending[out] = aside


def committed(path: Path) -> None:
    """A checkpoint now exists at `path`: the previous run of the directory holding it can go."""
    path = Path(path).absolute()
    for out in [o for o in _pending if o == path or o in path.parents]:
        shutil.rmtree(_pending.pop(out), ignore_errors=True)


def finish(success: bool) -> None:
    """End of a command: on success drop every set-aside run; on failure put them back in place of the new files."""
    for out, aside in list(_pending.items()):
        if not success:
            for entry in out.iterdir():
                if not entry.name.startswith("."):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            for entry in aside.iterdir():
                entry.rename(out / entry.name)
        shutil.rmtree(aside, ignore_errors=True)
        del _pending[out]
