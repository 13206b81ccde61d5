"""Checkpoints: `model.safetensors` + `config.json`, written atomically, never pickled.

Two kinds live in a stage's run directory:

- the *model checkpoint* at the top of the directory (`DIR/model.safetensors`, `DIR/config.json`), which the
  next stage reads by path;
- *resume checkpoints* under `DIR/resume/step-XXXXXXX/` holding everything a run needs to continue exactly
  (weights of every trained model, optimizer and scheduler state, KL controller, RNG states, data position).
  `DIR/resume/latest` names the newest complete one.

Atomicity: a file is written to a temporary name in the same directory, fsynced, renamed over the target, and
the directory fsynced (so the rename itself survives a power loss); a resume checkpoint is assembled in
`step-XXXXXXX.tmp/` and renamed only once complete, then `latest` is switched. A SIGKILL at any moment leaves
either the old or the new checkpoint, never half of one; a write that fails (a full disk, no permission) is one
line naming the path, with the previous file untouched. Files get the permissions the user's umask gives (0644
under the usual 022): safetensors alone would write 0600, unreadable to a teammate on a shared filesystem.
Optimizer state and RNG states are flattened into safetensors + JSON, so loading never unpickles.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rlhf import __version__, run_dir
from rlhf.errors import UserError

WEIGHTS, CONFIG = "model.safetensors", "config.json"


# ------------------------------------------------------------------------------------------------ atomic files
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What open() would give a new file; read once, at import (the umask is process-wide).
FILE_MODE = 0o666 & ~_umask()


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable: the new name is in the directory's data only after this."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_failed(path: Path, e: Exception) -> UserError:
    """The one-line error of a write that failed, naming the path; the previous file is still in place."""
    reason = getattr(e, "strerror", None) or str(e)
    return UserError(
        f"{path}: cannot write ({reason}); free disk space or fix the permissions and run again "
        "(the previous file is unchanged)"
    )


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, SafetensorError) as e:
        raise write_failed(path, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (pretty, keys in insertion order)."""
    _atomic_write(Path(path), lambda p: p.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n"))


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write a safetensors file atomically. Tied weights are stored once per distinct storage."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(Path(path), lambda p: save_file(flat, str(p), metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint file not found; pass the directory a training command wrote")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(
            f"{path}: corrupt or unreadable safetensors file ({e}); re-run the stage that wrote it"
        ) from None


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found; is this a checkpoint directory written by rlhf?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = getattr(e, "lineno", None)
        where = f"{path}:{line}" if line else str(path)
        raise UserError(f"{where}: corrupt JSON ({e}); re-run the stage that wrote it") from None


# ------------------------------------------------------------------------------------------------ model checkpoints
def save_model(directory: str | Path, state_dict: dict[str, torch.Tensor], config: dict) -> None:
    """Write `model.safetensors` then `config.json` (with package version) into `directory`, each atomically."""
    directory = Path(directory)
    state = _dedupe_tied(state_dict)
    save_tensors(directory / WEIGHTS, state, metadata={"format": "pt"})
    write_json(directory / CONFIG, {**config, "rlhf_version": __version__})
    run_dir.committed(directory)  # --overwrite: the run this one replaces can go now


def load_model_files(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, config) of a model checkpoint directory, with one-line errors for anything missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: checkpoint directory not found")
    config = read_json(directory / CONFIG)
    if not isinstance(config, dict):
        raise UserError(f"{directory / CONFIG}: not a JSON object; re-run the stage that wrote it")
    return load_tensors(directory / WEIGHTS), config


def _dedupe_tied(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: keep the first name of tied tensors (the loader re-ties them)."""
    seen: set[int] = set()
    out = {}
    for k, v in state_dict.items():
        key = v.data_ptr()
        if key in seen and v.numel() > 0:
            continue
        seen.add(key)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------ resume state
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG a run consumes, as tensors + JSON."""
    np_state = np.random.get_state()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64)),
    }
    py = random.getstate()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    v, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((v, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's state into tensors (per-parameter buffers) and JSON (hyper-parameters)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{prefix}.state.{idx}.{name}"] = val
            else:
                scalars[f"{idx}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, prefix: str, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    head = f"{prefix}.state."
    for key, val in tensors.items():
        if key.startswith(head):
            idx, name = key[len(head) :].split(".", 1)
            state.setdefault(int(idx), {})[name] = val
    for key, val in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    # JSON turned tuples (AdamW's betas) into lists; give them back their type so the state matches exactly.
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_resume(
    run_dir_path: str | Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int = 2
) -> Path:
    """Write a complete resume checkpoint for `step`, point `latest` at it, prune older ones."""
    root = Path(run_dir_path) / "resume"
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_tensors(tmp / "state.safetensors", _dedupe_tied(tensors))
        write_json(tmp / "state.json", {**meta, "step": step, "rlhf_version": __version__})
        _publish(root, tmp, final, keep)
    except OSError as e:
        raise write_failed(final, e) from None
    finally:  # a failed or interrupted write leaves no half checkpoint behind; `latest` still names the last one
        shutil.rmtree(tmp, ignore_errors=True)
    run_dir.committed(Path(run_dir_path))
    return final


def _publish(root: Path, tmp: Path, final: Path, keep: int) -> None:
    """A complete resume directory goes live: renamed into place (durably), `latest` switched, older ones pruned."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(root)
    _atomic_write(root / "latest", lambda p: p.write_text(final.name + "\n"))
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old.name != final.name and not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)


def save_resume_sharded(
    run_dir_path: str | Path,
    step: int,
    sharded: dict,
    tensors: dict[str, torch.Tensor],
    meta: dict,
    keep: int = 2,
) -> Path:
    """A resume checkpoint of sharded (FSDP) training, written by EVERY process: each writes its own shards of
    `sharded` (model and optimizer state dicts of DTensors) with torch.distributed.checkpoint into the step's
    temporary directory; rank 0 adds `tensors` + `meta` (RNG states, data position), renames the complete directory
    into place and switches `latest`, as `save_resume` does - so no half-written directory is ever the latest."""
    import torch.distributed.checkpoint as dcp

    from rlhf.distributed import barrier, is_main

    root = Path(run_dir_path) / "resume"
    final, tmp = root / f"step-{step:07d}", root / f"step-{step:07d}.tmp"
    try:
        if is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        dcp.save(sharded, checkpoint_id=str(tmp / "shards"))
        barrier()  # every process's shards are on disk
        if is_main():
            save_tensors(tmp / "state.safetensors", _dedupe_tied(tensors))
            write_json(
                tmp / "state.json", {**meta, "step": step, "sharded": True, "rlhf_version": __version__}
            )
            _publish(root, tmp, final, keep)
    except OSError as e:
        raise write_failed(final, e) from None
    finally:
        if is_main():
            shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    run_dir.committed(Path(run_dir_path))
    return final


def latest_resume(run_dir: str | Path) -> Path | None:
    """The newest complete resume checkpoint directory of `run_dir`, or None."""
    latest = Path(run_dir) / "resume" / "latest"
    return latest.parent / latest.read_text().strip() if latest.exists() else None


def load_resume(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The newest complete resume checkpoint of `run_dir`, or None when there is none."""
    path = latest_resume(run_dir)
    if path is None:
        return None
    return load_tensors(path / "state.safetensors"), read_json(path / "state.json")


def split_prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix.` with the prefix removed (e.g. a model's state dict inside a resume file)."""
    head = prefix + "."
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}
