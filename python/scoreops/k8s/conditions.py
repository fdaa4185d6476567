"""Conditions, phases and the wire boundary of a resource's status (typed, pure).

The status models are the ones the CRDs are generated from (``scoreops.api``); :func:`parse`
reads a stored ``.status`` into one and :func:`to_wire` writes it back. Every helper here
works on a model and never reads the clock: ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from scoreops.api import Condition
from scoreops.api.base import Phase
from scoreops.api.correctorservice import CorrectorServiceStatus
from scoreops.api.evalsuite import EvalSuiteStatus
from scoreops.api.scorerun import ScoreRunStatus

TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed"})

VALID = "Valid"
CREATED = "Created"
SPEC_APPLIED = "SpecApplied"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
PROGRESSING = "Progressing"
RESULTS = "ResultsAvailable"
READY = "Ready"

INVALID_SPEC = "InvalidSpec"
STALLED = "Stalled"
SPEC_CHANGE_REFUSED = "SpecChangeRefused"
WAITING_FOR_MODEL = "WaitingForModel"

Status = ScoreRunStatus | EvalSuiteStatus | CorrectorServiceStatus
S = TypeVar("S", ScoreRunStatus, EvalSuiteStatus, CorrectorServiceStatus)


# --- the wire boundary ---------------------------------------------------------------------


def parse(status_type: type[S], wire: Mapping[str, Any] | None) -> S:
    """The typed status of a stored ``.status`` (camelCase); unknown keys are kept."""
    return status_type.model_validate(dict(wire or {}))


def to_wire(status: Status | Condition) -> dict[str, Any]:
    """The status as written to the API server: camelCase keys, only the fields that were
    read or set (a default never written stays absent), no nulls."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)


# --- time ------------------------------------------------------------------------------------


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time (``Z`` or an offset); None for None or garbage."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# --- conditions ------------------------------------------------------------------------------


def get_condition(status: Status | None, type_: str) -> Condition | None:
    for cond in status.conditions if status is not None else []:
        if cond.type == type_:
            return cond
    return None


def condition_true(status: Status | None, type_: str) -> bool:
    cond = get_condition(status, type_)
    return cond is not None and cond.status == "True"


def set_condition(conditions: Sequence[Condition], type_: str, status: bool | None,
                  reason: str, message: str, now: datetime,
                  generation: int | None = None) -> list[Condition]:
    """``conditions`` with ``type_`` set (added or replaced, order kept).

    ``lastTransitionTime`` moves only when the status flips, as Kubernetes conventions ask.
    ``status`` None means Unknown.
    """
    value = "Unknown" if status is None else ("True" if status else "False")
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond.model_copy(deep=True))
            continue
        found = True
        since = cond.last_transition_time if cond.status == value else None
        out.append(_condition(type_, value, reason, message, since or rfc3339(now), generation,
                              cond.observed_generation))
    if not found:
        out.append(_condition(type_, value, reason, message, rfc3339(now), generation, None))
    return out


def _condition(type_: str, value: str, reason: str, message: str, since: str,
               generation: int | None, old_generation: int | None) -> Condition:
    fields: dict[str, Any] = {"type": type_, "status": value, "reason": reason}
    if message:  # optional by convention; an empty one is left out
        fields["message"] = message
    fields["last_transition_time"] = since
    gen = generation if generation is not None else old_generation
    if gen is not None:
        fields["observed_generation"] = gen
    return Condition(**fields)


def put_condition(status: S, type_: str, value: bool | None, reason: str, message: str,
         now: datetime, generation: int | None = None) -> None:
    """Set one condition of ``status`` in place (on a copy the caller owns)."""
    status.conditions = set_condition(status.conditions, type_, value, reason, message, now,
                                      generation)


def drop_condition(status: S, type_: str) -> None:
    status.conditions = [c for c in status.conditions if c.type != type_]


def with_condition(status: S, type_: str, value: bool | None, reason: str, message: str,
          now: datetime, generation: int | None = None) -> S:
    new = status.model_copy(deep=True)
    put_condition(new, type_, value, reason, message, now, generation)
    return new


def phase_of(status: Status | None) -> str:
    return str(status.phase if status is not None else "Pending")


def is_terminal(status: Status | None) -> bool:
    return phase_of(status) in TERMINAL


def derive_phase(status: Status) -> Phase:
    if condition_true(status, FAILED):
        return "Failed"
    if condition_true(status, SUCCEEDED):
        return "Succeeded"
    if condition_true(status, RUNNING):
        return "Running"
    return "Pending"


def with_phase(status: S) -> S:
    status.phase = derive_phase(status)
    return status


