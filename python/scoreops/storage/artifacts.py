"""Atomic multi-file artifacts: checkpoints, models, evaluation results.

An artifact is a directory-like prefix holding files plus a ``MANIFEST.json`` that lists
them (relative path, size, sha256), when it was created and free-form metadata. The
manifest is written **last**: an artifact without one is incomplete (its write was
interrupted or is still running) and is never listed or loaded. Replacing an artifact
removes the old manifest before the new files go up, so a reader never pairs an old
manifest with new files.

Manifest format (``"format": "scoreops.artifact/v1"``)::

    {"format": "scoreops.artifact/v1", "created": "2026-01-01T00:00:00.000000+00:00",
     "files": [{"path": "model.safetensors", "size": 123, "sha256": "ab12..."}],
     "total_size": 123, "metadata": {...}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from scoreops.storage import core, local
from scoreops.storage.errors import IncompleteArtifactError, NotFoundError, StorageError
from scoreops.storage.uri import LocalLocation, join, parse

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "is_complete",
    "list_artifacts",
    "load_artifact",
    "read_manifest",
    "save_artifact",
]

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = "scoreops.artifact/v1"
_WORKERS = 4

UriLike = str | os.PathLike[str]
T = TypeVar("T")
R = TypeVar("R")


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(items))) as pool:
        return list(pool.map(fn, items))


def _local_files(local_dir: Path) -> list[str]:
    """Relative posix paths of the files to save (the manifest itself excluded)."""
    names = [
        name for name, _ in local.list_entries(local_dir, recursive=True) if name != MANIFEST_NAME
    ]
    return sorted(names)


def _same_local_dir(uri: UriLike, directory: Path) -> bool:
    loc = parse(uri)
    return (
        isinstance(loc, LocalLocation)
        and loc.path.exists()
        and loc.path.resolve() == directory.resolve()
    )


def _write_manifest(uri: UriLike, data: bytes) -> None:
    """Write the manifest; the artifact is complete once this returns."""
    core.write_bytes(join(uri, MANIFEST_NAME), data)


def _encode_manifest(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()


def save_artifact(
    local_dir: str | os.PathLike[str], uri: UriLike, metadata: dict[str, Any] | None = None
) -> str:
    """Upload every file under ``local_dir`` to ``uri``, then write ``MANIFEST.json`` last.

    Returns ``uri`` without a trailing slash. ``metadata`` must be JSON-serialisable; it is
    stored under ``"metadata"`` in the manifest. An existing artifact at ``uri`` is replaced
    (its manifest goes first, so it is never half-old, half-new).
    """
    src = Path(local_dir).expanduser()
    target = os.fspath(uri).rstrip("/") or os.fspath(uri)
    if not src.is_dir():
        raise StorageError(f"cannot save {src} as an artifact at {target}: not a directory")
    try:
        json.dumps(metadata or {})
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"artifact metadata for {target} is not JSON-serialisable: {exc}"
        ) from exc
    names = _local_files(src)

    def describe(name: str) -> dict[str, Any]:
        path = src / name
        return {"path": name, "size": path.stat().st_size, "sha256": _sha256_file(path)}

    files = _parallel(describe, names)
    manifest_uri = join(target, MANIFEST_NAME)
    in_place = _same_local_dir(target, src)
    if not in_place:
        core.delete(manifest_uri)  # a replaced artifact stops being complete right away
        _parallel(lambda name: core.upload_file(src / name, join(target, name)), names)
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "files": files,
        "total_size": sum(f["size"] for f in files),
        "metadata": metadata or {},
    }
    _write_manifest(target, _encode_manifest(manifest))
    return target


def _validate_manifest(uri: str, manifest: Any) -> dict[str, Any]:
    def bad(why: str) -> IncompleteArtifactError:
        return IncompleteArtifactError(f"the manifest of artifact {uri} is not valid: {why}")

    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise bad("expected an object with a 'files' list")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise bad(f"unknown format {manifest.get('format')!r} (expected {MANIFEST_FORMAT!r})")
    for entry in manifest["files"]:
        if not isinstance(entry, dict):
            raise bad("a 'files' entry is not an object")
        path, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
        if not isinstance(path, str) or not path or path.startswith("/"):
            raise bad(f"bad file path {path!r}")
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise bad(f"file path {path!r} must be relative, without '.' or '..'")
        if not isinstance(size, int) or size < 0:
            raise bad(f"bad size {size!r} for {path}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise bad(f"bad sha256 {digest!r} for {path}")
    return manifest


def _read_manifest_bytes(uri: str) -> bytes:
    try:
        return core.read_bytes(join(uri, MANIFEST_NAME))
    except NotFoundError as exc:
        raise IncompleteArtifactError(
            f"{uri} is not a complete artifact: {MANIFEST_NAME} is missing (the write was "
            "interrupted or is still running, or the URI is wrong)"
        ) from exc


def _parse_manifest(uri: str, raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise IncompleteArtifactError(
            f"the manifest of artifact {uri} is not valid JSON: {exc}"
        ) from exc
    return _validate_manifest(uri, manifest)


def read_manifest(uri: UriLike) -> dict[str, Any]:
    """The parsed, validated manifest; IncompleteArtifactError when missing or invalid."""
    target = os.fspath(uri).rstrip("/") or os.fspath(uri)
    return _parse_manifest(target, _read_manifest_bytes(target))


def _size_mismatches(uri: str, manifest: dict[str, Any]) -> list[str]:
    present = dict(core.list_entries(uri, recursive=True))
    problems = []
    for entry in manifest["files"]:
        actual = present.get(entry["path"])
        if actual is None:
            problems.append(f"{entry['path']} is missing")
        elif actual != entry["size"]:
            problems.append(
                f"{entry['path']} has {actual} bytes, the manifest says {entry['size']}"
            )
    return problems


def is_complete(uri: UriLike) -> bool:
    """True when ``uri`` has a valid manifest and every listed file with the listed size.

    Cheap (one manifest read and one listing, no hashing). A missing bucket or bad
    credentials still raise StorageError: they are not "incomplete".
    """
    target = os.fspath(uri).rstrip("/") or os.fspath(uri)
    try:
        manifest = read_manifest(target)
    except IncompleteArtifactError:
        return False
    return not _size_mismatches(target, manifest)


def _check_file(uri: str, entry: dict[str, Any], path: Path, verify: bool) -> None:
    actual = path.stat().st_size
    if actual != entry["size"]:
        raise IncompleteArtifactError(
            f"artifact {uri}: {entry['path']} has {actual} bytes but the manifest says "
            f"{entry['size']} (truncated or overwritten)"
        )
    if verify:
        digest = _sha256_file(path)
        if digest != entry["sha256"]:
            raise IncompleteArtifactError(
                f"artifact {uri}: {entry['path']} is corrupted: sha256 {digest} does not "
                f"match the manifest's {entry['sha256']}"
            )


def load_artifact(
    uri: UriLike, local_dir: str | os.PathLike[str], verify: bool = True
) -> dict[str, Any]:
    """Download the artifact at ``uri`` into ``local_dir`` and return its manifest.

    Every file's size is checked, and with ``verify`` its sha256 too. Raises
    IncompleteArtifactError when the manifest is missing or a file is missing or does not
    match. ``local_dir`` gets the manifest as well (last), so it is a complete artifact.
    """
    target = os.fspath(uri).rstrip("/") or os.fspath(uri)
    raw = _read_manifest_bytes(target)
    return _load(target, raw, Path(local_dir).expanduser(), verify)


def _load(target: str, raw: bytes, dst: Path, verify: bool) -> dict[str, Any]:
    manifest = _parse_manifest(target, raw)
    in_place = _same_local_dir(target, dst)

    def fetch(entry: dict[str, Any]) -> None:
        path = dst / entry["path"]
        if not in_place:
            try:
                core.download_file(join(target, entry["path"]), path)
            except NotFoundError as exc:
                raise IncompleteArtifactError(
                    f"artifact {target}: {entry['path']} is listed in the manifest but missing"
                ) from exc
        elif not path.is_file():
            raise IncompleteArtifactError(
                f"artifact {target}: {entry['path']} is listed in the manifest but missing"
            )
        _check_file(target, entry, path, verify)

    dst.mkdir(parents=True, exist_ok=True)
    _parallel(fetch, manifest["files"])
    if not in_place:
        local.write_bytes(dst / MANIFEST_NAME, raw)
    return manifest


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key putting ``step-50`` before ``step-100``."""
    return [(0, int(tok)) if tok.isdigit() else (1, tok) for tok in re.split(r"(\d+)", name)]


def list_artifacts(prefix_uri: UriLike) -> list[str]:
    """URIs of the complete artifacts directly under ``prefix_uri``, sorted by name (numbers
    in names compare as numbers: ``step-50`` comes before ``step-100``). Incomplete ones
    (no manifest, missing or truncated files) are left out."""
    children = [
        name.rstrip("/")
        for name, _ in core.list_entries(prefix_uri, recursive=False)
        if name.endswith("/")
    ]
    children.sort(key=_natural_key)
    uris = [join(prefix_uri, name) for name in children]
    complete = _parallel(is_complete, uris)
    return [u for u, ok in zip(uris, complete, strict=True) if ok]
