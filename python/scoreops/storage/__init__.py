"""One small interface over S3-compatible object stores and local files.

URIs: ``s3://bucket/key``, ``file:///abs/path``, a plain path, or ``store://key`` (the
embedded default store, a directory at ``$SCOREOPS_STORE`` or ``~/.scoreops/store``).

    from scoreops import storage

    storage.write_json("s3://runs/x/progress.json", {"step": 3})
    storage.save_artifact("ckpt/", "s3://runs/x/checkpoints/step-50", {"step": 50})
    newest = storage.list_artifacts("s3://runs/x/checkpoints")[-1]
    storage.load_artifact(newest, "/tmp/resume")

S3 is configured from the environment (``AWS_ENDPOINT_URL``/``S3_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_PROFILE``); see
:mod:`scoreops.storage.s3`. boto3 is imported only when an ``s3://`` URI is used.
"""

from scoreops.storage.artifacts import (
    MANIFEST_NAME,
    is_complete,
    list_artifacts,
    load_artifact,
    read_manifest,
    save_artifact,
)
from scoreops.storage.cache import artifact_cache_dir, cached_artifact, evict_artifact_cache
from scoreops.storage.core import (
    delete,
    delete_prefix,
    download_file,
    exists,
    list_entries,
    list_uris,
    read_bytes,
    read_json,
    read_text,
    size,
    upload_file,
    write_bytes,
    write_json,
    write_text,
)
from scoreops.storage.errors import IncompleteArtifactError, NotFoundError, StorageError
from scoreops.storage.s3 import clear_client_cache
from scoreops.storage.uri import is_remote, join, local_path, parse, store_root

__all__ = [
    "MANIFEST_NAME",
    "IncompleteArtifactError",
    "NotFoundError",
    "StorageError",
    "artifact_cache_dir",
    "cached_artifact",
    "clear_client_cache",
    "delete",
    "delete_prefix",
    "download_file",
    "evict_artifact_cache",
    "exists",
    "is_complete",
    "is_remote",
    "join",
    "list_artifacts",
    "list_entries",
    "list_uris",
    "load_artifact",
    "local_path",
    "parse",
    "read_bytes",
    "read_json",
    "read_manifest",
    "read_text",
    "save_artifact",
    "size",
    "store_root",
    "upload_file",
    "write_bytes",
    "write_json",
    "write_text",
]
