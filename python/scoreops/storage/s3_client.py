"""S3 connection settings and the cached boto3 client (boto3 imported lazily).

:mod:`scoreops.storage.s3` holds the operations; this module reads the environment on every
call (see that module's table of variables) and caches one client per endpoint and credentials.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from scoreops.storage.errors import StorageError

__all__ = [
    "MULTIPART_CHUNKSIZE",
    "MULTIPART_THRESHOLD",
    "SETUP_HELP",
    "Handle",
    "S3Settings",
    "clear_client_cache",
    "client_handle",
    "get_client",
    "settings_from_env",
    "transfer_config",
]

MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNKSIZE = 8 * 1024 * 1024

_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
SETUP_HELP = (
    "set AWS_ENDPOINT_URL (or S3_ENDPOINT_URL) to the S3-compatible server, e.g. "
    "http://127.0.0.1:9000, and AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY "
    "(or AWS_PROFILE naming a profile in ~/.aws/config)"
)

# ------------------------------------------------------------------------------ settings


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class S3Settings:
    """Where and as whom to talk S3; hashable, so it keys the client cache."""

    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None = field(repr=False)
    session_token: str | None = field(repr=False)
    profile: str | None
    addressing_style: str = "path"
    verify: bool = True
    max_attempts: int = 5
    connect_retries: int = 2

    @property
    def endpoint_label(self) -> str:
        return self.endpoint or f"AWS S3 ({self.region})"


def settings_from_env() -> S3Settings:
    """Read the S3 settings from the environment (see the module docstring)."""
    env = os.environ
    endpoint = next((env[v].strip() for v in _ENDPOINT_VARS if env.get(v, "").strip()), None)
    if endpoint and "://" not in endpoint:
        https = env.get("S3_USE_HTTPS", "1").strip().lower() not in ("0", "false", "no")
        endpoint = f"{'https' if https else 'http'}://{endpoint}"
    access_key = env.get("AWS_ACCESS_KEY_ID") or None
    secret_key = env.get("AWS_SECRET_ACCESS_KEY") or None
    if bool(access_key) != bool(secret_key):
        missing = "AWS_SECRET_ACCESS_KEY" if access_key else "AWS_ACCESS_KEY_ID"
        raise StorageError(
            f"{missing} is not set while its partner is (endpoint "
            f"{endpoint or 'AWS S3'}): set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    style = env.get("S3_ADDRESSING_STYLE", "path").strip().lower() or "path"
    if style not in ("path", "virtual", "auto"):
        raise StorageError(f"S3_ADDRESSING_STYLE={style!r}: use path, virtual or auto")
    return S3Settings(
        endpoint=endpoint,
        region=(env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1").strip(),
        access_key=access_key,
        secret_key=secret_key,
        session_token=(env.get("AWS_SESSION_TOKEN") or None) if access_key else None,
        profile=None if access_key else (env.get("AWS_PROFILE") or None),
        addressing_style=style,
        verify=env.get("S3_VERIFY_SSL", "1").strip().lower() not in ("0", "false", "no"),
        max_attempts=max(1, _int_env("SCOREOPS_S3_MAX_ATTEMPTS", 5)),
        connect_retries=max(0, _int_env("SCOREOPS_S3_CONNECT_RETRIES", 2)),
    )


# ------------------------------------------------------------------------------ clients


@dataclass
class Handle:
    """A client plus what error messages need to know about it."""

    client: Any
    settings: S3Settings
    access_key: str

    @property
    def endpoint(self) -> str:
        url = getattr(self.client.meta, "endpoint_url", None)
        return str(url) if url else self.settings.endpoint_label


_clients: dict[S3Settings, Handle] = {}
_clients_lock = threading.Lock()


def clear_client_cache() -> None:
    """Forget every cached client (the next call builds one from the environment)."""
    with _clients_lock:
        _clients.clear()


def _make_handle(settings: S3Settings) -> Handle:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    try:
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=settings.secret_key,
            aws_session_token=settings.session_token,
            profile_name=settings.profile,
            region_name=settings.region,
        )
    except ProfileNotFound:
        raise StorageError(
            f"AWS_PROFILE={settings.profile!r} names no profile in ~/.aws/config or "
            f"~/.aws/credentials; {SETUP_HELP}"
        ) from None
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        raise StorageError(f"cannot load S3 credentials: {exc}; {SETUP_HELP}") from exc
    if credentials is None:
        if settings.endpoint is None:
            raise StorageError(f"S3 is not configured (no endpoint, no credentials): {SETUP_HELP}")
        raise StorageError(
            f"no S3 credentials for endpoint {settings.endpoint}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=32,
        user_agent_extra="scoreops",
    )
    client = session.client(
        "s3", endpoint_url=settings.endpoint, config=config, verify=settings.verify
    )
    return Handle(client, settings, credentials.access_key or "?")


def client_handle(settings: S3Settings | None = None) -> Handle:
    settings = settings or settings_from_env()
    with _clients_lock:
        handle = _clients.get(settings)
        if handle is None:
            handle = _clients[settings] = _make_handle(settings)
        return handle


def get_client(settings: S3Settings | None = None) -> Any:
    """The cached boto3 S3 client for ``settings`` (default: from the environment)."""
    return client_handle(settings).client


def transfer_config() -> Any:
    """boto3 ``TransferConfig``: multipart at and above 8 MiB, 8 MiB parts."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_CHUNKSIZE,
        max_concurrency=4,
    )
