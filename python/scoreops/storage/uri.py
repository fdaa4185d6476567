"""Storage URIs: ``s3://bucket/key``, ``file:///abs/path``, ``store://key`` and plain paths.

``store://key`` names ``key`` inside the embedded default store, a local directory at
``$SCOREOPS_STORE`` (default ``~/.scoreops/store``). Everything that is not ``s3://`` is a
local path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from scoreops.storage.errors import StorageError

__all__ = [
    "LocalLocation",
    "Location",
    "S3Location",
    "is_remote",
    "join",
    "local_path",
    "parse",
    "store_root",
]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HELP = "use s3://bucket/key, file:///abs/path, store://key (the embedded store) or a plain path"


def store_root() -> Path:
    """The embedded default store: ``$SCOREOPS_STORE`` or ``~/.scoreops/store``."""
    env = os.environ.get("SCOREOPS_STORE")
    return Path(env).expanduser() if env else Path.home() / ".scoreops" / "store"


@dataclass(frozen=True)
class S3Location:
    """An object (or a prefix, when ``key`` is empty or ends with ``/``) in an S3 bucket."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class LocalLocation:
    """A file or directory on the local file system."""

    path: Path


Location = S3Location | LocalLocation


def _text(uri: str | os.PathLike[str]) -> str:
    text = os.fspath(uri)
    if not isinstance(text, str) or not text:
        raise StorageError(f"empty storage URI: {_HELP}")
    return text


def parse(uri: str | os.PathLike[str]) -> Location:
    """Parse a storage URI; raises :class:`StorageError` for an unsupported or malformed one."""
    text = _text(uri)
    m = _SCHEME.match(text)
    if m is None:
        return LocalLocation(Path(text).expanduser())
    scheme = m.group(1).lower()
    rest = text[m.end() :]
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"{text!r} has no bucket: expected s3://BUCKET/KEY")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise StorageError(
                f"{text!r}: {bucket!r} is not a valid bucket name "
                "(3-63 characters: lowercase letters, digits, '.', '-')"
            )
        return S3Location(bucket, key.lstrip("/"))
    if scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest.startswith("/"):
            raise StorageError(f"{text!r}: a file URI needs an absolute path, file:///abs/path")
        return LocalLocation(Path(rest))
    if scheme == "store":
        key = rest.strip("/")
        if ".." in key.split("/"):
            raise StorageError(f"{text!r}: '..' is not allowed in a store:// key")
        root = store_root()
        return LocalLocation(root / key if key else root)
    raise StorageError(f"{text!r}: unsupported URI scheme {scheme!r}; {_HELP}")


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for ``s3://`` URIs, False for local paths, ``file://`` and ``store://``."""
    return isinstance(parse(uri), S3Location)


def local_path(uri: str | os.PathLike[str]) -> Path:
    """The local path a ``file://``, ``store://`` or plain-path URI names (not for ``s3://``)."""
    loc = parse(uri)
    if isinstance(loc, S3Location):
        raise StorageError(f"{os.fspath(uri)!r} is remote; download it first")
    return loc.path


def _join2(rest: str, part: str) -> str:
    if not rest:
        return part
    stripped = rest.rstrip("/")
    return f"{stripped}/{part}" if stripped else f"/{part}"


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Append path components with ``/``, keeping the scheme: ``join("s3://b/runs", "x",
    "ckpt")`` is ``"s3://b/runs/x/ckpt"``. Leading and trailing slashes of the parts are
    dropped (a part never resets the path, unlike :func:`os.path.join`)."""
    text = _text(uri)
    m = _SCHEME.match(text)
    head, rest = (text[: m.end()], text[m.end() :]) if m else ("", text)
    for part in parts:
        piece = str(part).strip("/")
        if piece:
            rest = _join2(rest, piece)
    return head + rest
