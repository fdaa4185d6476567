"""S3 backend (boto3, imported lazily).

Configuration comes from the environment, read on every call (a changed environment gets a
new client; clients are cached per endpoint and credentials):

==========================================  ===============================================
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``  the S3-compatible endpoint, first one set wins;
or ``S3_ENDPOINT_URL``                       unset means AWS itself. ``host:port`` without
                                             a scheme means https unless ``S3_USE_HTTPS=0``
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``  static credentials
``AWS_PROFILE``                              a profile in ``~/.aws/config`` (when no static
                                             keys are set)
``AWS_REGION`` / ``AWS_DEFAULT_REGION``      default ``us-east-1``
``S3_ADDRESSING_STYLE``                      ``path`` (default), ``virtual`` or ``auto``
``S3_VERIFY_SSL``                            ``0`` to skip TLS verification (``AWS_CA_BUNDLE``
                                             for a private CA)
``SCOREOPS_S3_MAX_ATTEMPTS``                 botocore standard-mode attempts (default 5)
``SCOREOPS_S3_CONNECT_RETRIES``              further whole-operation retries on connection
                                             errors, with exponential backoff (default 2)
==========================================  ===============================================

Requests are signed with SigV4 and use path-style addressing. Objects of 8 MiB and more go
up (and down) in 8 MiB parts through boto3's transfer manager.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from scoreops.storage.errors import NotFoundError, StorageError
from scoreops.storage.s3_client import (
    MULTIPART_CHUNKSIZE,
    MULTIPART_THRESHOLD,
    SETUP_HELP,
    Handle,
    S3Settings,
    clear_client_cache,
    client_handle,
    get_client,
    settings_from_env,
    transfer_config,
)
from scoreops.storage.uri import S3Location

__all__ = [
    "MULTIPART_CHUNKSIZE",
    "MULTIPART_THRESHOLD",
    "S3Settings",
    "clear_client_cache",
    "delete",
    "delete_prefix",
    "download_file",
    "exists",
    "get_client",
    "list_entries",
    "read_bytes",
    "settings_from_env",
    "size",
    "transfer_config",
    "upload_file",
    "write_bytes",
]

_LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (tests lower it to exercise paging)
_DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys
_BACKOFF_BASE_S = 0.5
_BACKOFF_MAX_S = 8.0


T = TypeVar("T")


# ------------------------------------------------------------------------------ errors


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or str(
        response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


def _is_connection_error(exc: BaseException) -> bool:
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    return isinstance(
        exc,
        EndpointConnectionError
        | ConnectionClosedError
        | ConnectTimeoutError
        | ReadTimeoutError
        | IncompleteReadError
        | ResponseStreamingError,
    )


def _translate(exc: BaseException, h: Handle, op: str, loc: S3Location) -> StorageError:
    """A clear :class:`StorageError` for a boto3 failure of ``op`` on ``loc``."""
    from botocore.exceptions import ClientError, NoCredentialsError

    uri, ep, key_id = loc.uri, h.endpoint, h.access_key
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"no S3 credentials to {op} {uri} at endpoint {ep}: {SETUP_HELP}")
    if _is_connection_error(exc):
        return StorageError(
            f"cannot reach the S3 endpoint {ep} to {op} {uri}: {exc}. Is the server running? "
            "Set AWS_ENDPOINT_URL (or S3_ENDPOINT_URL) to its address"
        )
    if not isinstance(exc, ClientError):
        return StorageError(f"S3 request to {op} {uri} at endpoint {ep} failed: {exc}")
    code = _error_code(exc)
    message = exc.response.get("Error", {}).get("Message") or ""
    if code in ("NoSuchBucket",):
        return StorageError(
            f"bucket '{loc.bucket}' does not exist at endpoint {ep} (while trying to {op} "
            f"{uri}): create the bucket or fix the URI"
        )
    if code in ("NoSuchKey", "404", "NotFound"):
        return NotFoundError(f"{uri} does not exist (endpoint {ep})")
    if code == "InvalidAccessKeyId":
        return StorageError(
            f"access key id '{key_id}' is not known at endpoint {ep} (while trying to {op} "
            f"{uri}): check AWS_ACCESS_KEY_ID, or AWS_ENDPOINT_URL if the key belongs to "
            "another server"
        )
    if code == "SignatureDoesNotMatch":
        return StorageError(
            f"endpoint {ep} rejected the secret key of access key id '{key_id}' "
            f"(SignatureDoesNotMatch while trying to {op} {uri}): check AWS_SECRET_ACCESS_KEY"
        )
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return StorageError(
            f"access denied to {uri} at endpoint {ep} for access key id '{key_id}' (while "
            "trying to " + op + "): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the "
            "bucket's policy"
        )
    detail = f"{code}: {message}" if message else code
    return StorageError(f"S3 request to {op} {uri} at endpoint {ep} failed ({detail})")


def _call(h: Handle, op: str, loc: S3Location, fn: Callable[[], T]) -> T:
    """Run ``fn`` retrying connection failures with exponential backoff; translate errors."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceededError

    attempt = 0
    while True:
        try:
            return fn()
        except StorageError:
            raise
        except (
            BotoCoreError,
            ClientError,
            RetriesExceededError,
            TransferRetriesExceededError,
            S3UploadFailedError,
        ) as exc:
            cause: BaseException = exc
            if isinstance(exc, RetriesExceededError | TransferRetriesExceededError):
                cause = exc.last_exception or exc
            elif isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
                cause = exc.__context__
            if _is_connection_error(cause) and attempt < h.settings.connect_retries:
                delay = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2**attempt)
                time.sleep(delay * (0.5 + random.random() / 2))
                attempt += 1
                continue
            raise _translate(cause, h, op, loc) from exc


def _explain_head_failure(h: Handle, op: str, loc: S3Location, exc: BaseException) -> NoReturn:
    """HEAD answers 404/403 with no body; a LIST on the same bucket says what went wrong."""
    _call(h, op, loc, lambda: h.client.list_objects_v2(Bucket=loc.bucket, MaxKeys=1))
    raise _translate(exc, h, op, loc) from exc


# ------------------------------------------------------------------------------ operations


def read_bytes(loc: S3Location) -> bytes:
    h = client_handle()

    def get() -> bytes:
        response = h.client.get_object(Bucket=loc.bucket, Key=loc.key)
        return bytes(response["Body"].read())

    return _call(h, "read", loc, get)


def write_bytes(loc: S3Location, data: bytes) -> None:
    h = client_handle()
    if len(data) >= MULTIPART_THRESHOLD:

        def put() -> None:
            _upload_fileobj(h, io.BytesIO(data), loc)

    else:

        def put() -> None:
            h.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)

    _call(h, "write", loc, put)


def _upload_fileobj(h: Handle, fileobj: Any, loc: S3Location) -> None:
    from boto3.s3.transfer import create_transfer_manager

    manager = create_transfer_manager(h.client, transfer_config())
    try:
        manager.upload(fileobj, loc.bucket, loc.key).result()
    finally:
        manager.shutdown()


def _download_to(h: Handle, loc: S3Location, path: Path) -> None:
    from boto3.s3.transfer import create_transfer_manager

    manager = create_transfer_manager(h.client, transfer_config())
    try:
        # s3transfer writes to a temporary name and renames it once complete
        manager.download(loc.bucket, loc.key, str(path)).result()
    finally:
        manager.shutdown()


def upload_file(path: Path, loc: S3Location) -> None:
    if not path.is_file():
        raise NotFoundError(f"cannot upload {path} to {loc.uri}: no such file")
    h = client_handle()

    def up() -> None:
        with path.open("rb") as fh:
            _upload_fileobj(h, fh, loc)

    _call(h, "upload to", loc, up)


def download_file(loc: S3Location, path: Path) -> None:
    from botocore.exceptions import ClientError

    h = client_handle()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _call(h, "download", loc, lambda: _download_to(h, loc, path))
    except NotFoundError as exc:
        cause = exc.__cause__
        if isinstance(cause, ClientError) and _error_code(cause) in ("404", "NotFound"):
            _explain_head_failure(h, "download", loc, cause)
        raise


def _head_object(h: Handle, op: str, loc: S3Location) -> dict[str, Any]:
    """HEAD the object; on 404/403 (which carry no body) a LIST tells which error it is."""
    from botocore.exceptions import ClientError

    try:
        return _call(h, op, loc, lambda: h.client.head_object(Bucket=loc.bucket, Key=loc.key))
    except StorageError as exc:
        if isinstance(exc.__cause__, ClientError):
            _explain_head_failure(h, op, loc, exc.__cause__)
        raise


def size(loc: S3Location) -> int:
    return int(_head_object(client_handle(), "stat", loc)["ContentLength"])


def exists(loc: S3Location) -> bool:
    """An object at ``loc``, a non-empty prefix ``loc/``, or (empty key) the bucket."""
    from botocore.exceptions import ClientError

    h = client_handle()
    if not loc.key:
        try:
            _call(h, "check", loc, lambda: h.client.head_bucket(Bucket=loc.bucket))
            return True
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _error_code(cause) in ("404", "NoSuchBucket"):
                return False
            if isinstance(cause, ClientError):
                _explain_head_failure(h, "check", loc, cause)
            raise
    if not loc.key.endswith("/"):
        try:
            _head_object(h, "check", loc)
            return True
        except NotFoundError:
            pass
    prefix = loc.key.rstrip("/") + "/"
    response = _call(
        h,
        "check",
        loc,
        lambda: h.client.list_objects_v2(Bucket=loc.bucket, Prefix=prefix, MaxKeys=1),
    )
    return bool(response.get("Contents") or response.get("CommonPrefixes"))


def _pages(h: Handle, loc: S3Location, prefix: str, delimiter: str | None) -> Iterator[dict]:
    """ListObjectsV2 pages. Paging follows IsTruncated/NextContinuationToken (some servers
    omit KeyCount)."""
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {
            "Bucket": loc.bucket,
            "Prefix": prefix,
            "MaxKeys": _LIST_PAGE_SIZE,
        }
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        page = _call(h, "list", loc, lambda kw=kwargs: h.client.list_objects_v2(**kw))
        yield page
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def _dir_prefix(loc: S3Location) -> str:
    return loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""


def list_entries(loc: S3Location, recursive: bool) -> list[tuple[str, int | None]]:
    """Objects under the prefix ``loc/`` as (relative key, size); not recursive: direct
    objects plus direct sub-prefixes as ``("name/", None)``."""
    h = client_handle()
    prefix = _dir_prefix(loc)
    out: list[tuple[str, int | None]] = []
    for page in _pages(h, loc, prefix, None if recursive else "/"):
        for obj in page.get("Contents") or ():
            rel = obj["Key"][len(prefix) :]
            if rel and not rel.endswith("/"):  # skip "directory marker" objects
                out.append((rel, int(obj.get("Size", 0))))
        for common in page.get("CommonPrefixes") or ():
            rel = common["Prefix"][len(prefix) :]
            if rel.strip("/"):
                out.append((rel, None))
    return out


def delete(loc: S3Location) -> None:
    h = client_handle()
    _call(h, "delete", loc, lambda: h.client.delete_object(Bucket=loc.bucket, Key=loc.key))


def delete_prefix(loc: S3Location) -> None:
    """Delete every object under ``loc/`` (the whole bucket's content for an empty key)."""
    h = client_handle()
    prefix = _dir_prefix(loc)
    keys = [prefix + rel for rel, _ in list_entries(loc, recursive=True)]
    for start in range(0, len(keys), _DELETE_BATCH):
        batch = [{"Key": k} for k in keys[start : start + _DELETE_BATCH]]
        response = _call(
            h,
            "delete",
            loc,
            lambda b=batch: h.client.delete_objects(
                Bucket=loc.bucket, Delete={"Objects": b, "Quiet": True}
            ),
        )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(
                f"could not delete {len(errors)} object(s) under {loc.uri} at endpoint "
                f"{h.endpoint}, e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )
