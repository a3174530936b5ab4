"""Atomic writes for everything a user keeps: exports, adapters, reports, checkpoints.

The rule is one: write the new version somewhere nothing reads (a hidden temporary beside the target),
fsync its data and its directory, then publish it with one rename. Until that rename the previous version
is untouched, so a run killed at any point leaves either the old file/directory or the new one, never a
mixture.

    with atomic_dir("runs/sst2/model") as tmp:   # tmp is an empty hidden directory beside the target
        save_file(state, tmp / "model.safetensors")
        write_text(tmp / "config.json", text)    # plain writes inside tmp; published together on exit

Replacing an existing directory uses Linux's `renameat2(RENAME_EXCHANGE)`, which swaps the two
directories in one step; elsewhere the old directory is first renamed aside (`.<name>.old-*`) and a
later `atomic_dir` on the same target puts it back if the process died between the two renames.

Reading is here too: `read_safetensors` is the one reader of a safetensors file that turns a missing or
corrupt file into a CheckpointError naming it (Hugging Face checkpoints, training checkpoints, adapters).

It imports only the standard library and `plmkit.errors` (safetensors when a file is read), so every
layer (models, interop, peft, training) may import it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plmkit.errors import CheckpointError

__all__ = [
    "atomic_dir", "atomic_file", "fsync_dir", "fsync_file", "read_safetensors", "write_json", "write_text",
]


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one written file's data to the disk, so a later rename never publishes unwritten bytes."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist a directory's entries (a rename inside it). A no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows opens no directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a hidden temporary beside `path` for writing; on a clean exit fsync it and rename it to `path`.

    On an exception the temporary is removed and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write `value` as JSON (with a trailing newline) to `path` atomically."""
    return write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2); False where the system cannot."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0  # EINVAL/ENOSYS: the file system or kernel lacks it; fall back


def _aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.old-*"))


def _recover(path: Path) -> None:
    """Undo a replacement cut between its two renames: the target is missing but its old copy is aside."""
    old = _aside(path)
    if not path.exists() and old:
        os.rename(old[-1], path)
        old = old[:-1]
    for stale in old:
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replaces: str | None = None) -> Iterator[Path]:
    """Yield an empty hidden directory beside `path`; on a clean exit publish it as `path` in one step.

    Everything written into the yielded directory is fsynced, then it replaces `path` (an existing
    directory at `path` is swapped out and removed only afterwards). On an exception the temporary is
    removed and `path` is left as it was. Temporaries left by a killed process are removed the next time.
    With `replaces` (a file name, e.g. "config.json"), a non-empty directory at `path` without that file
    is refused: it is someone's folder, not an earlier version of this output.
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    _recover(path)
    if replaces and path.is_dir() and any(path.iterdir()) and not (path / replaces).exists():
        raise CheckpointError(
            f"{path}: holds files but no {replaces}; refusing to replace a folder that is not a saved output"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not path.exists():
        os.rename(tmp, path)
    elif _exchange(tmp, path):  # tmp now holds the old version
        fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.rmdir(old)
        os.rename(path, old)
        os.rename(tmp, path)
        fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(path.parent)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors of a safetensors file (on the CPU) and its header's string metadata ({} if none).

    A missing, truncated or corrupt file raises CheckpointError naming it; only safetensors is ever
    read here, never a pickle.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(path)), metadata
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types (SafetensorError, OSError, ...)
        raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from None
