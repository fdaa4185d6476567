"""Local-file backend: plain paths, ``file://`` and the embedded ``store://``.

Writes are atomic per file: the bytes go to a hidden temporary file next to the target,
are flushed to disk, and are renamed over the target. Readers never see a partial file;
temporary files left by a crash are never listed.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from scoreops.storage.errors import NotFoundError, StorageError

__all__ = [
    "TMP_PREFIX",
    "copy_file",
    "delete",
    "delete_prefix",
    "exists",
    "list_entries",
    "read_bytes",
    "write_bytes",
]

TMP_PREFIX = ".scoreops-tmp-"
_CHUNK = 1 << 20


def _fail(op: str, path: Path, exc: OSError) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"{path} does not exist ({op})")
    return StorageError(f"cannot {op} {path}: {exc.strerror or exc}")


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _fail("read", path, exc) from exc


def _atomic_write(path: Path, fill: Callable[[IO[bytes]], None]) -> None:
    """Create ``path`` atomically with the bytes ``fill`` writes to the file object."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:12]}")
        # os.open with 0o666 lets the umask decide the mode, as for a plain open()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise _fail("write", path, exc) from exc


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data))


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (a no-op when both are the same file)."""
    try:
        if dst.exists() and src.resolve() == dst.resolve():
            return
        fin = src.open("rb")
    except OSError as exc:
        raise _fail("read", src, exc) from exc
    with fin:
        _atomic_write(dst, lambda fh: shutil.copyfileobj(fin, fh, _CHUNK))


def _has_files(directory: Path) -> bool:
    return any(True for _ in _walk_files(directory))


def exists(path: Path) -> bool:
    """A file, or a directory holding at least one file (like a non-empty S3 prefix)."""
    if path.is_file():
        return True
    return path.is_dir() and _has_files(path)


def _walk_files(directory: Path) -> Iterator[tuple[str, int]]:
    """(relative posix path, size) of every file under ``directory``, temp files skipped."""
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX)]
        base = Path(root)
        for name in files:
            if name.startswith(TMP_PREFIX):
                continue
            full = base / name
            try:
                size = full.stat().st_size
            except OSError:  # removed meanwhile, or a dangling link
                continue
            yield full.relative_to(directory).as_posix(), size


def list_entries(directory: Path, recursive: bool) -> list[tuple[str, int | None]]:
    """Files under ``directory`` as (relative name, size). Not recursive: direct files plus
    direct sub-directories that hold files, as ``("name/", None)``."""
    if not directory.is_dir():
        return []
    if recursive:
        return list(_walk_files(directory))
    out: list[tuple[str, int | None]] = []
    try:
        children = list(directory.iterdir())
    except OSError as exc:
        raise _fail("list", directory, exc) from exc
    for child in children:
        if child.name.startswith(TMP_PREFIX):
            continue
        if child.is_dir():
            if _has_files(child):
                out.append((child.name + "/", None))
        elif child.is_file():
            out.append((child.name, child.stat().st_size))
    return out


def delete(path: Path) -> None:
    """Remove one file; a missing file is not an error."""
    try:
        if path.is_dir() and not path.is_symlink():
            raise StorageError(f"{path} is a directory: use delete_prefix to remove it")
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise _fail("delete", path, exc) from exc


def delete_prefix(directory: Path) -> None:
    """Remove ``directory`` and everything under it; a missing directory is not an error."""
    resolved = directory.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise StorageError(f"refusing to delete everything under {resolved}")
    if not directory.is_dir():
        return
    try:
        shutil.rmtree(directory)
    except OSError as exc:
        raise _fail("delete", directory, exc) from exc
