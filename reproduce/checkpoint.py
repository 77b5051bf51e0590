"""Training checkpoints: everything an exact resume needs, written atomically, read without unpickling.

A checkpoint holds the model and optimizer state dicts, the AMP grad-scaler state, the number of
finished iterations (which fixes the learning rate and the data position, see
``reproduce.train``), the RNG states of python, numpy and torch (CPU and CUDA) and the resolved
config, all as tensors and plain python types, so it loads with ``torch.load(weights_only=True)``:
a planted or foreign file that needs unpickling is refused, never run. Files are
``<prefix><iteration>.pt`` in the run folder plus a pointer (``latest.json``) naming the newest;
both are written to a temporary file and renamed, so a run killed at any moment (or a full disk)
leaves either the previous or the new checkpoint, never a broken one under a checkpoint's name.
Older checkpoints beyond ``keep`` are removed.

Resuming (:func:`find_checkpoint`) reads the pointer (a file directly inside the run folder, else
refused), then tries the checkpoint it names and the older ones, newest first, until one loads and
passes the caller's check; each one skipped is one line saying why. A pointer naming a missing file,
or a run folder where no checkpoint loads, is an error (:class:`CheckpointError`), never a silent
restart; a checkpoint of another model or config stops the run (:class:`CheckpointMismatch`).
"""

from __future__ import annotations

import json
import pickle
import random
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.errors import DeeplabError, OutputError
from converters.io import atomic_path, check_pth_file, write_json_atomic

__all__ = ["CheckpointError", "CheckpointMismatch", "rng_state", "set_rng_state", "check_rng_state",
           "save_checkpoint", "load_checkpoint", "find_checkpoint", "check_state_dict", "check_optimizer_state",
           "restore_scaler", "LATEST"]

LATEST = "latest.json"
MAX_POINTER_BYTES = 1 << 16  # a pointer is a few dozen bytes; a huge one is not read
FORMAT = "deeplab-repro checkpoint v2"
Say = Callable[[str], None]


class CheckpointError(DeeplabError):
    """A checkpoint or pointer file that cannot be used: one line naming the file and why."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint of another model or config than the run's: names both; resuming stops."""


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ============================================================================ RNG states as plain types
def rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy and torch (CPU and every CUDA device) as tensors and numbers."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _bad(where: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{where}: {problem}")


def _words(value: Any, n: int, what: str, where: str) -> tuple[int, ...]:
    """``n`` unsigned 32-bit words stored as an int64 tensor."""
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.int64 and tuple(value.shape) == (n,)):
        raise _bad(where, f"the {what} RNG state is not {n} int64 words")
    if n and (int(value.min()) < 0 or int(value.max()) >= 2**32):
        raise _bad(where, f"the {what} RNG state holds values outside 0..2^32-1")
    return tuple(int(v) for v in value.tolist())


def _decode_rng(state: Any, where: str) -> tuple[tuple, tuple, torch.Tensor, list[torch.Tensor]]:
    """The native (python, numpy, torch, cuda) states of a saved state; CheckpointError if malformed."""
    if not isinstance(state, Mapping):
        raise _bad(where, "an RNG state is not a mapping")
    py, npy, cpu, cuda = state.get("python"), state.get("numpy"), state.get("torch"), state.get("cuda", [])
    if not isinstance(py, Mapping) or type(py.get("version")) is not int or py["version"] != 3 \
            or "gauss" not in py or not (py["gauss"] is None or type(py["gauss"]) is float):
        raise _bad(where, "the python RNG state is malformed")
    words = _words(py.get("state"), 625, "python", where)
    if words[-1] > 624:
        raise _bad(where, "the python RNG state's position is out of range")
    if not isinstance(npy, Mapping) or not isinstance(npy.get("kind"), str) or npy["kind"] != "MT19937":
        raise _bad(where, "the numpy RNG state is malformed")
    pos, has_gauss, cached = npy.get("pos"), npy.get("has_gauss"), npy.get("cached_gaussian")
    if type(pos) is not int or not 0 <= pos <= 624 or type(has_gauss) is not int or has_gauss not in (0, 1) \
            or type(cached) is not float:
        raise _bad(where, "the numpy RNG state is malformed")
    keys = np.asarray(_words(npy.get("keys"), 624, "numpy", where), dtype=np.uint32)
    if not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8 and cpu.shape == torch.get_rng_state().shape):
        raise _bad(where, "the torch CPU RNG state is not a byte tensor of the right size")
    if not (isinstance(cuda, list) and all(isinstance(c, torch.Tensor) and c.dtype == torch.uint8 and c.dim() == 1
                                           for c in cuda)):
        raise _bad(where, "the CUDA RNG states are not a list of byte tensors")
    return (3, words, py["gauss"]), ("MT19937", keys, pos, has_gauss, cached), cpu, cuda


def check_rng_state(state: Any, where: str) -> None:
    """Raise CheckpointError if ``state`` is not one :func:`rng_state` wrote (python, numpy and torch accept it)."""
    py, npy, cpu, _ = _decode_rng(state, where)
    before = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:  # the setters are the authority on what they accept; the current states are put back at once
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
    except (ValueError, TypeError, OverflowError, RuntimeError) as e:
        raise _bad(where, f"an RNG state is refused ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    finally:
        random.setstate(before[0])
        np.random.set_state(before[1])
        torch.set_rng_state(before[2])


def set_rng_state(state: Mapping[str, Any], *, say: Say | None = _stderr, where: str = "checkpoint") -> None:
    """Restore a state of :func:`rng_state`. CUDA: the first min(saved, visible) devices get theirs; ``say``
    names what is left as it is (another number of visible GPUs, or no CUDA here)."""
    py, npy, cpu, cuda = _decode_rng(state, where)
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i, s in enumerate(cuda[:visible]):
        torch.cuda.set_rng_state(s, i)
    if len(cuda) != visible and say is not None and (cuda or visible):
        if not visible:
            say(f"note: {where} holds the CUDA RNG states of {len(cuda)} device(s); no CUDA here: not restored")
        elif len(cuda) < visible:
            say(f"note: {where} holds the CUDA RNG states of {len(cuda)} device(s), {visible} visible: devices "
                f"{len(cuda)}..{visible - 1} keep their current state")
        else:
            say(f"note: {where} holds the CUDA RNG states of {len(cuda)} device(s), {visible} visible: restored "
                f"devices 0..{visible - 1}, the states of devices {visible}..{len(cuda) - 1} are not used")


# ============================================================================ writing
class _RecordingFile:
    """A binary file whose write errors are kept: torch.save turns them into an opaque RuntimeError."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_checkpoint(run_dir: str | Path, iteration: int, payload: dict[str, Any], *, keep: int = 2,
                    prefix: str = "ckpt_", pointer: str = LATEST) -> Path:
    """Write ``<prefix><iteration>.pt`` and point ``pointer`` at it; keep the ``keep`` newest.

    ``payload`` must hold tensors and plain types only (what ``weights_only=True`` loads). A failed write (a full disk) is a CheckpointError naming the file, with nothing
    left under its name and the pointer unchanged.
    """
    run_dir = Path(run_dir)
    path = run_dir / f"{prefix}{iteration:07d}.pt"
    record = {"format": FORMAT, "iteration": iteration, **payload}
    try:
        with atomic_path(path, check=check_pth_file) as tmp:
            with open(tmp, "wb") as fh:
                out = _RecordingFile(fh)
                try:
                    torch.save(record, out)
                except RuntimeError:
                    if out.error is None:
                        raise
                    raise out.error from None
    except OutputError as e:  # atomic_path's one line for a failed or unverified write (full disk, size limit)
        reason = e.problem.removeprefix("could not be written (").removesuffix(")")
        raise CheckpointError(f"{path}: could not write the checkpoint ({reason}); nothing was written "
                              "under this name") from None
    try:
        write_json_atomic(run_dir / pointer, {"iteration": iteration, "file": path.name})
    except OutputError as e:
        raise CheckpointError(f"{run_dir / pointer}: could not write the checkpoint pointer ({e.problem}); "
                              "it still names the previous checkpoint") from None
    if keep > 0:  # only older ones: a stray file with a higher number never removes the new checkpoint
        for _, old in [c for c in _candidates(run_dir, prefix) if c[0] < iteration][keep - 1:]:
            old.unlink(missing_ok=True)
    return path


# ============================================================================ reading
def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def load_checkpoint(path: str | Path, *, required: tuple[str, ...] = ("model", "rng", "config")) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; CheckpointError (one line) if it is not one of ours.

    Checked here: a dict with this format's tag, an ``iteration`` equal to the one in the file name,
    the ``required`` keys, a model state of named tensors, valid RNG states. What the run must
    match (shapes, optimizer, config) is the caller's check.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything but tensors and plain types: planted code, or not our checkpoint
        why = re.search(r"(GLOBAL [\w.]+)", str(e))
        raise CheckpointError(f"{path}: holds pickled objects a safe load refuses ({why.group(1) if why else _first_line(e)}):"
                              " planted, or not a checkpoint of this version") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError,
            OverflowError) as e:
        # torch.load reports a damaged zip, record or storage with any of these; all mean "not loadable"
        raise CheckpointError(f"{path}: truncated or not a checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("format"), str) or ckpt["format"] != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    it = ckpt.get("iteration")
    stated = re.search(r"(\d{1,12})\.pt$", path.name)
    if type(it) is not int or it < 0 or (stated is not None and int(stated.group(1)) != it):
        raise CheckpointError(f"{path}: damaged (its iteration {it!r} does not match the file name)")
    for key in required:
        if key not in ckpt:
            raise CheckpointError(f"{path}: damaged (no {key!r} entry)")
    model = ckpt.get("model")
    if "model" in required and not (isinstance(model, dict) and model and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items())):
        raise CheckpointError(f"{path}: damaged (the model state is not a mapping of names to tensors)")
    if "config" in required and not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: damaged (the config is not a mapping)")
    for key in ("config", "init", "best"):
        if not _plain(ckpt.get(key)):
            raise CheckpointError(f"{path}: damaged (its {key} record holds other than plain values)")
    if "rng" in required:
        rngs = ckpt["rng"]
        if not isinstance(rngs, list) or not rngs:
            raise CheckpointError(f"{path}: damaged (no RNG states)")
        for r in rngs:
            check_rng_state(r, str(path))
    return ckpt


def _plain(obj: Any) -> bool:
    """True if ``obj`` is made of str-keyed dicts, lists, tuples, str, int, float, bool and None (no tensors).
    Iterative: a deeply nested record must not hit the recursion limit."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if not all(isinstance(k, str) for k in x):
                return False
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif not (x is None or type(x) in (str, int, float, bool)):
            return False
    return True


def check_state_dict(path: str | Path, saved: Mapping[str, Any], expected: Mapping[str, torch.Tensor],
                     what: str = "model") -> None:
    """CheckpointError naming the first key whose presence, shape or dtype differs from ``expected``."""
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    if missing or extra:
        names = ", ".join((["missing " + k for k in missing] + ["unexpected " + str(k) for k in extra])[:3])
        raise CheckpointError(f"{path}: the {what} state does not fit this model ({names})")
    for k, ref in expected.items():
        v = saved[k]
        if not isinstance(v, torch.Tensor) or v.shape != ref.shape or v.dtype != ref.dtype:
            got = f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise CheckpointError(f"{path}: wrong shape: {what} {k!r} is {got} in the checkpoint, "
                                  f"{tuple(ref.shape)} {ref.dtype} in this model")


def check_optimizer_state(path: str | Path, saved: Any, optimizer: torch.optim.Optimizer) -> None:
    """CheckpointError unless ``saved`` is a state of ``optimizer``'s kind: same groups and parameters,
    every tensor of a parameter's state shaped like the parameter, hyperparameters of the same types."""
    ref = optimizer.state_dict()
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
            and isinstance(saved.get("param_groups"), list) and len(saved["param_groups"]) == len(ref["param_groups"])):
        raise CheckpointError(f"{path}: the optimizer state does not fit this run (parameter groups differ)")
    shapes = {}
    for g_saved, g_ref, g_live in zip(saved["param_groups"], ref["param_groups"], optimizer.param_groups):
        if not isinstance(g_saved, dict) or not isinstance(g_saved.get("params"), list) \
                or not all(type(i) is int for i in g_saved["params"]) or g_saved["params"] != g_ref["params"] \
                or set(g_saved) != set(g_ref):
            raise CheckpointError(f"{path}: the optimizer state does not fit this run (parameter groups differ)")
        for key, value in g_ref.items():
            v = g_saved[key]
            if key != "params" and type(v) is not type(value) and not (isinstance(value, float)
                                                                       and type(v) is int):
                raise CheckpointError(f"{path}: the optimizer's {key!r} is a {type(v).__name__}, not a "
                                      f"{type(value).__name__}")
        for index, p in zip(g_ref["params"], g_live["params"]):
            shapes[index] = p.shape
    for index, entry in saved["state"].items():
        if index not in shapes or not isinstance(entry, dict):
            raise CheckpointError(f"{path}: the optimizer state names a parameter this model does not have")
        for name, v in entry.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != shapes[index]:
                raise CheckpointError(f"{path}: wrong shape: optimizer {name!r} of parameter {index} is "
                                      f"{tuple(v.shape)}, the parameter {tuple(shapes[index])}")
            if not (v is None or isinstance(v, (torch.Tensor, int, float))) or (isinstance(v, torch.Tensor)
                                                                 and not v.is_floating_point() and v.dim() > 0):
                raise CheckpointError(f"{path}: the optimizer's {name!r} of parameter {index} is malformed")


def check_scaler_state(path: str | Path, saved: Any) -> None:
    """CheckpointError unless ``saved`` is a GradScaler state (empty when AMP was off) of numbers."""
    if not isinstance(saved, dict) or any(type(v) not in (int, float) for v in saved.values()):
        raise CheckpointError(f"{path}: the AMP grad-scaler state is malformed")
    if saved and not {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(saved):
        raise CheckpointError(f"{path}: the AMP grad-scaler state is incomplete")


def restore_scaler(scaler: torch.amp.GradScaler, saved: Mapping[str, Any], *, say: Say | None = _stderr) -> None:
    """Load a GradScaler state across AMP on/off: an enabled scaler takes a saved state or starts fresh
    (the run was saved without AMP); a disabled one ignores a saved state. ``say`` tells which."""
    if scaler.is_enabled():
        if saved:
            scaler.load_state_dict(dict(saved))
        elif say is not None:
            say("note: the checkpoint was written without AMP: the grad scaler starts fresh")
    elif saved and say is not None:
        say("note: AMP is off in this run: the checkpoint's grad-scaler state is not used")


# ============================================================================ choosing the checkpoint to resume
def _regular_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the system refuses (too long, ...) instead of an OSError."""
    try:
        return path.is_file()
    except OSError:
        return False


def _inside(run_dir: Path, path: Path) -> bool:
    """True if ``path`` (links resolved) is a file directly inside ``run_dir``."""
    try:
        return path.resolve().parent == run_dir.resolve()
    except (OSError, RuntimeError):  # a link loop
        return False


def _read_pointer(run_dir: Path, pointer: Path, prefix: str, say: Say) -> Path | None:
    """The checkpoint ``pointer`` names; None (after one line) if it is malformed or names a file outside."""
    if not _inside(run_dir, pointer) or not _regular_file(pointer):
        say(f"warning: {pointer}: refused: not a regular file inside {run_dir}; looking for the newest checkpoint "
            "that loads")
        return None
    try:
        if pointer.stat().st_size > MAX_POINTER_BYTES:
            raise ValueError(f"{pointer.stat().st_size} bytes")
        record = json.loads(pointer.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        say(f"warning: {pointer}: not a checkpoint pointer ({type(e).__name__}: {_first_line(e)}); looking for "
            "the newest checkpoint that loads")
        return None
    name = record.get("file") if isinstance(record, dict) else None
    if not isinstance(name, str) or not name or "\x00" in name:
        say(f"warning: {pointer}: malformed (no \"file\" naming a checkpoint); looking for the newest checkpoint "
            "that loads")
        return None
    path = run_dir / name
    if not _inside(run_dir, path) or not re.fullmatch(re.escape(prefix) + r"\d{1,12}\.pt", path.name):
        say(f"warning: {pointer}: refused: it names {name!r}, not a checkpoint file inside {run_dir}; looking for "
            "the newest checkpoint that loads")
        return None
    if not _regular_file(path):
        raise CheckpointError(f"{pointer}: names {path.name}, which is missing; put it back, or delete "
                              f"{pointer.name} to resume from the newest checkpoint left in {run_dir}")
    return path


def _candidates(run_dir: Path, prefix: str) -> list[tuple[int, Path]]:
    found = []
    for p in run_dir.glob(f"{prefix}*.pt"):
        m = re.fullmatch(re.escape(prefix) + r"(\d{1,12})\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def find_checkpoint(run_dir: str | Path, *, prefix: str = "ckpt_", pointer: str = LATEST,
                    check: Callable[[Path, dict[str, Any]], None] | None = None,
                    required: tuple[str, ...] = ("model", "rng", "config"),
                    say: Say = _stderr) -> tuple[Path, dict[str, Any]] | None:
    """The newest usable checkpoint of the run in ``run_dir`` and its contents, or None for a new run.

    Tries the checkpoint the pointer names, then the older ones (all of them if the pointer is
    unusable), newest first; one that does not load, or fails ``check`` (which raises
    CheckpointError), is skipped with one line through ``say``. CheckpointMismatch from ``check``
    stops at once. Errors: the pointer names a missing file; checkpoints exist but none is usable.
    """
    run_dir = Path(run_dir)
    pointer_path = run_dir / pointer
    named = None
    if pointer_path.exists() or pointer_path.is_symlink():
        named = _read_pointer(run_dir, pointer_path, prefix, say)
    all_found = _candidates(run_dir, prefix)
    if named is not None:
        limit = int(re.fullmatch(re.escape(prefix) + r"(\d{1,12})\.pt", named.name).group(1))
        order = [named] + [p for i, p in all_found if i < limit and p != named]
    else:
        if all_found and not pointer_path.exists():
            say(f"note: {pointer_path} is missing; looking for the newest checkpoint that loads")
        order = [p for _, p in all_found]
    skipped = []
    for path in order:
        try:
            if not _inside(run_dir, path) or not _regular_file(path):
                raise CheckpointError(f"{path}: refused: not a regular file inside {run_dir}")
            ckpt = load_checkpoint(path, required=required)
            if check is not None:
                check(path, ckpt)
        except CheckpointMismatch:
            raise
        except CheckpointError as e:
            say(f"skipping {e}")
            skipped.append(path.name)
            continue
        return path, ckpt
    if skipped or pointer_path.exists() or pointer_path.is_symlink():
        raise CheckpointError(f"{run_dir}: holds a run but no usable checkpoint"
                              + (f" ({', '.join(skipped[:4])} skipped)" if skipped else "")
                              + "; use another --out, or delete the run's checkpoints to start it over")
    return None
