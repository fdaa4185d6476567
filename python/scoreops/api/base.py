"""Shared building blocks of the resource API: the base model, URIs, scheduling, conditions.

Every field has a description: it becomes the CRD's OpenAPI description, `kubectl explain`
text and the help of the local runner. Field names are snake_case in Python and camelCase
on the wire (the Kubernetes convention).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "scoreops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base of every spec object: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase keys, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- URIs -------------------------------------------------------------------------------------

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SCHEMES = ("s3://", "file://", "store://", "builtin://", "http://", "https://")


def _check_bucket(uri: str) -> None:
    rest = uri[len("s3://") :]
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket: expected s3://BUCKET/PREFIX")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"{uri!r}: bucket {bucket!r} is not a valid S3 bucket name "
            "(3-63 characters: lowercase letters, digits, '.', '-')"
        )


def _storage_uri(value: str) -> str:
    """A location the platform can read or write: s3://, file://, store:// or a path."""
    if not value or not value.strip():
        raise ValueError("must not be empty")
    if value != value.strip():
        raise ValueError(f"{value!r} has leading or trailing whitespace")
    if value.startswith("s3://"):
        _check_bucket(value)
    elif "://" in value and not value.startswith(("file://", "store://")):
        raise ValueError(
            f"{value!r}: unsupported scheme; use s3://bucket/prefix, file:///path, "
            "store://key (the embedded store) or a plain path"
        )
    return value


def _model_uri(value: str) -> str:
    """A model location: a storage URI or builtin://NAME (a model shipped in a package)."""
    if value.startswith("builtin://"):
        if not value[len("builtin://") :]:
            raise ValueError(f"{value!r}: expected builtin://NAME, e.g. builtin://smollm2-135m-instruct")
        return value
    return _storage_uri(value)


def _output_uri(value: str) -> str:
    _storage_uri(value)
    if value.startswith("s3://") and not value[len("s3://") :].partition("/")[2].strip("/"):
        # s3://bucket alone would mix runs at the bucket root
        raise ValueError(f"{value!r}: give a prefix under the bucket, e.g. s3://bucket/runs/NAME")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r}: an endpoint must be an http:// or https:// URL")
    return value


StorageUri = Annotated[str, AfterValidator(_storage_uri)]
ModelUri = Annotated[str, AfterValidator(_model_uri)]
OutputUri = Annotated[str, AfterValidator(_output_uri)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]

DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ResourceName = Annotated[str, Field(pattern=DNS1123, min_length=1, max_length=63)]
Duration = Annotated[
    str,
    Field(pattern=r"^[0-9]+(s|m|h)$", description="A duration such as 90s, 30m or 2h."),
]


def duration_seconds(value: str) -> int:
    """Seconds in a Duration string (``90s``, ``30m``, ``2h``)."""
    return int(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]


# --- scheduling ------------------------------------------------------------------------------


class Toleration(ApiModel):
    """A Kubernetes toleration, so pods may land on tainted GPU nodes."""

    key: str | None = Field(None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="How long a NoExecute taint is tolerated."
    )


class Placement(ApiModel):
    """Where pods run: node selector, tolerations and affinity for the GPU pool."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods require (the GPU pool)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations for tainted GPU nodes."
    )
    affinity: dict[str, Any] | None = Field(
        None, description="A Kubernetes affinity object, passed through unchanged."
    )


# --- status ----------------------------------------------------------------------------------

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


class Condition(ApiModel):
    """A Kubernetes-style condition: one aspect of the resource's state."""

    type: str = Field(description="Condition type, e.g. Ready, Progressing, Failed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str = Field(description="RFC 3339 time of the last status change.")
    observed_generation: int | None = Field(
        None, description="The .metadata.generation the condition was set for."
    )


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ObjectMeta(BaseModel):
    """The part of metadata the platform reads; everything else passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: ResourceName = Field(description="Name of the resource (DNS-1123 label).")
    namespace: str | None = Field(None, description="Namespace of the resource.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
