"""`metrics.jsonl`: one JSON object per logged step, under the fixed names documented in docs/metrics.md."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    """Appends one JSON line per `log()` call and flushes it, so a crash loses at most the line being written.

    On resume, lines logged after the resumed step are dropped first, so a resumed run's file reads like a
    straight run's.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._f = open(self.path, "a")

    def log(self, step: int, **values: float) -> dict:
        row = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        return row

    def close(self) -> None:
        self._f.close()


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
