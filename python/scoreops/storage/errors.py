"""Exceptions raised by :mod:`scoreops.storage`.

Every message names the URI involved and, for S3, the endpoint, plus what to change.
"""

from __future__ import annotations

__all__ = ["IncompleteArtifactError", "NotFoundError", "StorageError"]


class StorageError(Exception):
    """A storage operation failed: the message says on which URI, where, and what to set."""


class NotFoundError(StorageError, FileNotFoundError):
    """The object or file does not exist (the bucket, when there is one, does)."""


class IncompleteArtifactError(StorageError):
    """An artifact has no ``MANIFEST.json`` (its write never finished) or a file in it does not
    match the manifest (missing, wrong size, wrong sha256)."""
