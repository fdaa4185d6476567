"""Reading and writing dataset files by URI.

Local paths (``/data/x.jsonl``, ``./x.jsonl``, ``file:///data/x.jsonl``) are read directly,
so tests and local runs need nothing else; ``s3://`` and ``store://`` (the embedded object
store) go through :mod:`scoreops.storage`, imported only when such a URI is used.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_ROOT", "describe", "exists", "is_local", "join", "read_bytes", "write_bytes"]

#: Where imported benchmarks and datasets live unless told otherwise: the embedded store.
DEFAULT_ROOT = "store://"


def is_local(uri: str) -> bool:
    """True for a filesystem path or ``file://`` URI."""
    return "://" not in uri or uri.startswith("file://")


def _path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()


def join(root: str, *parts: str) -> str:
    """``root`` + ``/part/...`` for paths and URIs alike (``store://`` + ``a`` = ``store://a``)."""
    if is_local(root):
        return str(_path(root).joinpath(*parts))
    base = root if root.endswith("/") else root + "/"
    return base + "/".join(p.strip("/") for p in parts)


def read_bytes(uri: str) -> bytes:
    """Bytes of the object or file at ``uri``; FileNotFoundError if there is none."""
    if is_local(uri):
        return _path(uri).read_bytes()
    from scoreops import storage

    if not storage.exists(uri):
        raise FileNotFoundError(uri)
    return storage.read_bytes(uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` at ``uri`` (parent folders created for paths)."""
    if is_local(uri):
        path = _path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return
    from scoreops import storage

    storage.write_bytes(uri, data)


def exists(uri: str) -> bool:
    """Whether a file or object exists at ``uri``."""
    if is_local(uri):
        return _path(uri).is_file()
    from scoreops import storage

    return bool(storage.exists(uri))


def describe(uri: str) -> str:
    """``uri`` plus where it really is, for error messages."""
    if is_local(uri):
        return str(_path(uri).resolve())
    if uri.startswith("store://"):
        try:
            from scoreops.storage.uri import local_path

            return f"{uri} ({local_path(uri)})"
        except Exception:  # a description must never fail
            return f"{uri} (the embedded store: $SCOREOPS_STORE, default ~/.scoreops/store)"
    return uri
