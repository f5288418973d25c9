"""File helpers: atomic writes and safe checkpoint loading (never unpickles arbitrary objects)."""

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from polynl_deploy.errors import CheckpointError, OutputPathError, PolyNLError

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    target = Path(path)
    make_directory(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp (and writers that replace the file, like safetensors) leave 0600: give it open()'s mode
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``path``; only if the block succeeds, move its entries into ``path``
    (created if absent, entries of the same name replaced), so a failure leaves ``path`` as it was."""
    target = Path(path)
    make_directory(target.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if os.path.lexists(target):
            for entry in staging.iterdir():
                _replace_entry(entry, target / entry.name)
        else:
            os.replace(staging, target)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_entry(entry: Path, destination: Path) -> None:
    """Rename ``entry`` over ``destination``; a folder on either side is moved aside first, then removed."""
    if not (os.path.lexists(destination) and (entry.is_dir() or destination.is_dir())):
        os.replace(entry, destination)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
    try:
        os.replace(destination, retired / destination.name)
        os.replace(entry, destination)
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def make_directory(path: str | os.PathLike) -> Path:
    """Create folder ``path`` and its parents if absent; OutputPathError naming it if that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create directory {path}: {_reason(exc)}") from None
    return path


def check_outputs(*, files: Iterable = (), directories: Iterable = (), inputs: Iterable = ()) -> None:
    """Fail early, before any long work, unless every output can be written: no directory where a file
    goes (or file where a folder goes), a parent folder that can be created and written, no output
    that is one of the ``inputs`` or another output. ``None`` entries are skipped."""
    outputs = [(Path(p), True) for p in directories if p is not None] + \
              [(Path(p), False) for p in files if p is not None]
    taken = {Path(p).resolve(): f"would overwrite the input {p}" for p in inputs if p is not None}
    for target, is_directory in outputs:
        if target.resolve() in taken:
            raise OutputPathError(f"output {target} {taken[target.resolve()]}; choose another path")
        taken[target.resolve()] = "is given for two outputs"
        if is_directory and target.exists() and not target.is_dir():
            raise OutputPathError(f"output folder {target} is an existing file")
        if not is_directory and target.is_dir():
            raise OutputPathError(f"output {target} is an existing directory; give a file path")
        _check_writable(target, target if is_directory else target.parent)


def _check_writable(target: Path, folder: Path) -> None:
    """Probe the nearest existing ancestor of ``folder`` with a nameless temporary file."""
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {target}: {folder} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputPathError(f"cannot write {target}: directory {folder} is not writable "
                              f"({_reason(exc)})") from None


def _cannot_write(target: Path, exc: OSError) -> OutputPathError:
    return OutputPathError(f"cannot write {target}: {_reason(exc)}")


def _reason(exc: OSError) -> str:
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return "a file is in the way"
    return exc.strerror or str(exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def sha256_of(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require_file(path, error: type[PolyNLError], kind: str = "file", prefix: str = "") -> Path:
    """``path`` as a Path; raises ``error`` saying it is missing or a directory."""
    path = Path(path)
    if not path.is_file():
        reason = "is a directory, not a file" if path.is_dir() else f"no such {kind}"
        raise error(f"{prefix}{path}: {reason}")
    return path


def load_state_dict(path: str | os.PathLike) -> "dict[str, torch.Tensor]":
    """Read a safetensors file or a torch state_dict saved with tensors only (``weights_only=True``)."""
    import torch

    path = require_file(path, CheckpointError, prefix="checkpoint ")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({exc})") from exc
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: file is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(
            f"checkpoint {path}: not a plain tensor checkpoint (loading with weights_only=True refused it: "
            f"{_refusal_reason(exc)}); save the weights as .safetensors (safetensors.torch.save_file)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: expected a mapping of parameter names to tensors")
    return state


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation of torch.load",
                 "(1)", "(2)")
_UNPICKLER_REASON = "WeightsUnpickler error:"


def _refusal_reason(exc: Exception) -> str:
    """What is wrong, from torch.load's refusal: its WeightsUnpickler line, else its first line that is
    not PyTorch's advice around it (which includes loading the file unsafely); files that are no torch
    checkpoint at all make torch.load raise a bare KeyError or a magic-number error."""
    if isinstance(exc, KeyError) or "magic number" in str(exc):
        return "not a torch checkpoint"
    lines = [line.strip() for line in str(exc).splitlines()]
    for line in lines:
        if line.startswith(_UNPICKLER_REASON):
            return line[len(_UNPICKLER_REASON):].strip().split(". Please use")[0][:300].rstrip(".")
    reasons = [line for line in lines if line and not line.startswith(_TORCH_ADVICE)]
    return reasons[0][:300].rstrip(".") if reasons else type(exc).__name__


def apply_state_dict(model: "torch.nn.Module", state: "dict[str, torch.Tensor]", source: str) -> None:
    """Load ``state`` strictly, naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
                        for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    mis_typed = sorted(f"{k} (checkpoint {state[k].dtype}, model {expected[k].dtype})"
                       for k in set(state) & set(expected)
                       if state[k].is_floating_point() != expected[k].is_floating_point())
    if missing or unexpected or mis_shaped or mis_typed:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped),
                            ("dtype mismatch (floating vs integer)", mis_typed)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"checkpoint {source} does not match the model; " + "; ".join(parts))
    model.load_state_dict(state)
