"""Dataset files by URI: a thin layer over :mod:`scoreops.storage` for the data modules.

Paths, ``file://``, ``store://`` (the embedded store) and ``s3://`` all go through the one
storage interface; what this adds is the default root and error descriptions that say where
a URI really points.
"""

from __future__ import annotations

from scoreops import storage

__all__ = ["DEFAULT_ROOT", "describe", "exists", "is_local", "join", "read_bytes", "write_bytes"]

#: Where imported benchmarks and datasets live unless told otherwise: the embedded store.
DEFAULT_ROOT = "store://"

join = storage.join


def is_local(uri: str) -> bool:
    """True for a filesystem path or ``file://`` URI (not the store, not S3)."""
    return "://" not in uri or uri.startswith("file://")


def read_bytes(uri: str) -> bytes:
    """Bytes of the object or file at ``uri``; FileNotFoundError if there is none."""
    return storage.read_bytes(uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` at ``uri`` atomically (parent folders created for paths)."""
    storage.write_bytes(uri, data)


def exists(uri: str) -> bool:
    """Whether a file or object exists at ``uri``."""
    return bool(storage.exists(uri))


def describe(uri: str) -> str:
    """``uri`` plus where it really is, for error messages."""
    if storage.is_remote(uri):
        return uri
    try:
        return f"{uri} ({storage.local_path(uri).resolve()})" if "://" in uri \
            else str(storage.local_path(uri).resolve())
    except Exception:  # a description must never fail
        return uri
