"""The rules a resource must also meet to run on a cluster, as reusable checks; each kind's
module in :mod:`scoreops.k8s.kinds` applies the ones that concern it (see
:mod:`scoreops.k8s.checks` for why they exist).

Each check appends a :class:`~scoreops.api.FieldError` naming the field to ``errors``.
"""

from __future__ import annotations

from scoreops.api import FieldError

DNS_LABEL_MAX = 63

_LOCAL_ONLY = (
    "store:// is the embedded store of one machine; pods cannot reach it, use s3://"
)


def not_local(uri: str | None, field: str, errors: list[FieldError]) -> None:
    """A location a pod can reach: not the embedded store of one machine."""
    if uri is not None and uri.startswith("store://"):
        errors.append(FieldError(field, f"{uri!r}: {_LOCAL_ONLY}"))


def s3_output(uri: str, field: str, errors: list[FieldError]) -> None:
    """An output the pods can write and the operator can read: s3://."""
    if not uri.startswith("s3://"):
        errors.append(FieldError(
            field,
            f"{uri!r}: on a cluster the output must be s3://bucket/prefix (pods write there "
            "and the operator reads progress from there)",
        ))


def name_fits(name: str, longest_suffix: str, errors: list[FieldError]) -> None:
    """``name`` plus the longest suffix a child adds is still a DNS label."""
    longest = name + longest_suffix
    if len(longest) > DNS_LABEL_MAX:
        errors.append(FieldError(
            "metadata.name",
            f"{name!r} is too long: child object {longest!r} would exceed {DNS_LABEL_MAX} "
            f"characters; use at most {DNS_LABEL_MAX - len(longest_suffix)}",
        ))
