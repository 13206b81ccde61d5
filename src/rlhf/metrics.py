"""`metrics.jsonl`: one JSON object per logged step, under the fixed names documented in docs/metrics.md.

Optionally (`--tensorboard`) the same names and values also go to a TensorBoard event file in `<out>/tensorboard/`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rlhf.distributed import is_main
from rlhf.errors import UserError


class MetricsWriter:
    """Appends one JSON line per `log()` call and flushes it, so a crash loses at most the line being written.

    On resume, lines logged after the resumed step are dropped first, so a resumed run's file reads like a
    straight run's. Under torchrun only rank 0 writes; on the other ranks `log()` only returns the row.
    With `tensorboard=True` every numeric value is also written as a TensorBoard scalar under the same name.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(path)
        self._f = None
        self._tb = None
        if not is_main():
            return
        if tensorboard:
            self._tb = tensorboard_writer(self.path.parent / "tensorboard", resume_step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._f = open(self.path, "a")

    def log(self, step: int, **values: float) -> dict:
        row = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
        if self._tb is not None:
            for name, v in row.items():
                if name != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(name, v, step)
            self._tb.flush()
        return row

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._tb is not None:
            self._tb.close()


def tensorboard_writer(log_dir: Path, resume_step: int | None):
    """A TensorBoard SummaryWriter; on resume, events after `resume_step` are hidden (`purge_step`), so the
    curves read like a straight run's - the same rule as metrics.jsonl."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'"
        ) from None
    if resume_step is None:  # a fresh run starts a fresh log, as metrics.jsonl does
        for old in log_dir.glob("events.out.tfevents.*"):
            old.unlink()
    purge = None if resume_step is None else resume_step + 1
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge)


def _clean(v):
    """Plain floats for JSON; non-finite values become null (JSON has no NaN) rather than breaking readers."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(path: str | Path) -> list[dict]:
    """All complete lines of a metrics file (a torn last line from a crash is ignored)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
