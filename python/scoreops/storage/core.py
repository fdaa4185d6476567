"""Object operations on any storage URI: S3, local paths, ``file://`` and ``store://``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scoreops.storage import local, s3
from scoreops.storage.uri import LocalLocation, S3Location, join, parse

__all__ = [
    "delete",
    "delete_prefix",
    "download_file",
    "exists",
    "list_entries",
    "list_uris",
    "read_bytes",
    "read_json",
    "read_text",
    "size",
    "upload_file",
    "write_bytes",
    "write_json",
    "write_text",
]

UriLike = str | os.PathLike[str]


def read_bytes(uri: UriLike) -> bytes:
    """The whole object or file; :class:`NotFoundError` when it does not exist."""
    loc = parse(uri)
    return s3.read_bytes(loc) if isinstance(loc, S3Location) else local.read_bytes(loc.path)


def write_bytes(uri: UriLike, data: bytes) -> None:
    """Create or replace the object; atomic (readers see the old or the new bytes)."""
    loc = parse(uri)
    data = bytes(data)
    if isinstance(loc, S3Location):
        s3.write_bytes(loc, data)
    else:
        local.write_bytes(loc.path, data)


def read_text(uri: UriLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_text(uri: UriLike, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def read_json(uri: UriLike) -> Any:
    from scoreops.storage.errors import StorageError

    raw = read_bytes(uri)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StorageError(f"{os.fspath(uri)} is not valid JSON: {exc}") from exc


def write_json(uri: UriLike, obj: Any, *, indent: int | None = 2) -> None:
    """Serialise ``obj`` (``default=str`` is not used: non-JSON values raise TypeError)."""
    write_text(uri, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def exists(uri: UriLike) -> bool:
    """True for an existing object/file, or a prefix/directory holding at least one."""
    loc = parse(uri)
    return s3.exists(loc) if isinstance(loc, S3Location) else local.exists(loc.path)


def list_entries(prefix_uri: UriLike, recursive: bool = True) -> list[tuple[str, int | None]]:
    """(name relative to the prefix, size) under the directory-like prefix ``prefix_uri/``,
    sorted by name; not recursive, sub-prefixes come as ``("name/", None)``."""
    loc = parse(prefix_uri)
    if isinstance(loc, S3Location):
        entries = s3.list_entries(loc, recursive)
    else:
        entries = local.list_entries(loc.path, recursive)
    return sorted(entries)


def list_uris(prefix_uri: UriLike, recursive: bool = True) -> list[str]:
    """Full URIs of the objects under ``prefix_uri`` (treated as a directory: listing
    ``s3://b/run1`` never returns ``s3://b/run10/...``), sorted, in the caller's scheme.

    Not recursive: the direct objects plus the direct sub-prefixes, which end with ``/``.
    A prefix with nothing under it gives ``[]``; a missing bucket raises StorageError.
    """
    out = []
    for name, _ in list_entries(prefix_uri, recursive):
        full = join(prefix_uri, name)
        out.append(full + "/" if name.endswith("/") else full)
    return out


def size(uri: UriLike) -> int:
    """Size in bytes of one object or file."""
    from scoreops.storage.errors import NotFoundError, StorageError

    loc = parse(uri)
    if isinstance(loc, LocalLocation):
        try:
            return loc.path.stat().st_size
        except FileNotFoundError as exc:
            raise NotFoundError(f"{loc.path} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot stat {loc.path}: {exc}") from exc
    return s3.size(loc)


def upload_file(local_path: str | os.PathLike[str], uri: UriLike) -> None:
    """Copy a local file to ``uri`` (multipart at 8 MiB and above on S3)."""
    src = Path(local_path).expanduser()
    loc = parse(uri)
    if isinstance(loc, S3Location):
        s3.upload_file(src, loc)
    else:
        local.copy_file(src, loc.path)


def download_file(uri: UriLike, local_path: str | os.PathLike[str]) -> None:
    """Copy ``uri`` to a local file (created with its parent directories, atomically)."""
    dst = Path(local_path).expanduser()
    loc = parse(uri)
    if isinstance(loc, S3Location):
        s3.download_file(loc, dst)
    else:
        local.copy_file(loc.path, dst)


def delete(uri: UriLike) -> None:
    """Delete one object or file; deleting a missing one is not an error."""
    loc = parse(uri)
    if isinstance(loc, S3Location):
        s3.delete(loc)
    else:
        local.delete(loc.path)


def delete_prefix(prefix_uri: UriLike) -> None:
    """Delete everything under the directory-like prefix ``prefix_uri/``."""
    loc = parse(prefix_uri)
    if isinstance(loc, S3Location):
        s3.delete_prefix(loc)
    else:
        local.delete_prefix(loc.path)
