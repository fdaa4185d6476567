"""Status logic: pure functions from what the operator observed to the next ``.status``.

Every function takes the current status as its typed model (``ScoreRunStatus``,
``EvalSuiteStatus`` or ``CorrectorServiceStatus``, the models the CRDs are generated from)
and returns a new one; :func:`parse` and :func:`to_wire` convert at the boundary, and the
caller writes the wire form only when it differs, so a reconcile that observes nothing new
writes nothing. Only the fields a transition sets are written (``exclude_unset``). Time is an
argument (``now``), never read here.

Conditions (type: reasons):

- ``Valid``: True ``SpecValid`` / False ``InvalidSpec`` (the message names each field).
- ``Created``: True ``ChildrenApplied`` / False ``WaitingForModel`` (a referenced ScoreRun
  has not succeeded yet).
- ``SpecApplied``: True ``Applied`` / False ``SpecChangeRefused`` (the children keep running
  the spec they were created with).
- ``Running``, ``Succeeded``, ``Failed``: mirrored from the child (PyTorchJob
  ``Created/Running/Restarting/Succeeded/Failed``, batch Job ``Complete/Failed``); ``Failed``
  also with ``InvalidSpec`` or ``Stalled``.
- ``Progressing`` (ScoreRun): True ``Advancing`` with ``step 12/18 (stage1)``; Unknown
  ``NoProgressYet`` / ``ProgressUnreadable``; False ``Stalled``.
- ``ResultsAvailable`` (EvalSuite), ``Ready`` (CorrectorService, mirrored from KServe).

``phase`` follows: Failed, Succeeded, Running, else Pending; Succeeded and Failed are final.

The condition helpers and the wire boundary are in :mod:`scoreops.k8s.conditions`, the
reduction of a child job's status in :mod:`scoreops.k8s.childstate`; both are re-exported
here, so ``status`` is the one module to read the transitions from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from scoreops.api import FieldError
from scoreops.api.correctorservice import CorrectorServiceStatus
from scoreops.api.evalsuite import EvalSuiteStatus
from scoreops.api.scorerun import ScoreRunStatus
from scoreops.k8s.childstate import ChildState, batch_job_state, pytorchjob_state
from scoreops.k8s.conditions import (
    CREATED,
    FAILED,
    INVALID_SPEC,
    PROGRESSING,
    READY,
    RESULTS,
    RUNNING,
    SPEC_APPLIED,
    SPEC_CHANGE_REFUSED,
    STALLED,
    SUCCEEDED,
    TERMINAL,
    VALID,
    WAITING_FOR_MODEL,
    Phase,
    S,
    Status,
    condition_true,
    derive_phase,
    drop_condition,
    get_condition,
    is_terminal,
    parse,
    parse_time,
    phase_of,
    put_condition,
    rfc3339,
    set_condition,
    to_wire,
    with_condition,
    with_phase,
)
from scoreops.k8s.progress import EvalSummary, Progress

__all__ = [
    "CREATED", "FAILED", "INVALID_SPEC", "PROGRESSING", "READY", "RESULTS", "RUNNING",
    "SPEC_APPLIED", "SPEC_CHANGE_REFUSED", "STALLED", "SUCCEEDED", "TERMINAL", "VALID",
    "WAITING_FOR_MODEL", "ChildState", "Phase", "Status", "applied_message", "batch_job_state",
    "changed", "condition_true", "created_status", "derive_phase", "format_errors",
    "get_condition", "invalid_status", "is_terminal", "mark_stalled", "parse", "parse_time",
    "phase_of", "pytorchjob_state", "refused_status", "rfc3339", "set_condition",
    "stall_deadline", "sync_correctorservice_status", "sync_evalsuite_status",
    "sync_scorerun_status", "to_wire", "waiting_status",
]

# The statuses of job-backed kinds: they mirror a job's start and completion times.
J = TypeVar("J", ScoreRunStatus, EvalSuiteStatus)


# --- what the handlers record ------------------------------------------------------------------


def format_errors(errors: Iterable[FieldError]) -> str:
    return "; ".join(str(e) for e in errors)


def invalid_status(status: S, errors: Sequence[FieldError], now: datetime,
                   generation: int | None) -> S:
    """The spec cannot run: Failed with reason InvalidSpec, each field named."""
    message = format_errors(errors)
    new = with_condition(status, VALID, False, INVALID_SPEC, message, now, generation)
    put_condition(new, FAILED, True, INVALID_SPEC, message, now, generation)
    new.observed_generation = generation
    return with_phase(new)


def created_status(status: S, children: Sequence[Mapping[str, Any]], now: datetime,
                   generation: int | None, extra: Mapping[str, Any] | None = None) -> S:
    """Children applied for ``generation``: Valid, Created and SpecApplied all True.

    A spec that was InvalidSpec before and is valid now clears that failure. ``extra`` sets
    the kind's own fields (by field name, e.g. ``job_name``).
    """
    names = ", ".join(f"{c['kind']} {c['metadata']['name']}" for c in children)
    new = with_condition(status, VALID, True, "SpecValid", "", now, generation)
    failed = get_condition(new, FAILED)
    if failed is not None and failed.reason == INVALID_SPEC:
        drop_condition(new, FAILED)
    put_condition(new, CREATED, True, "ChildrenApplied", f"applied {names}", now, generation)
    put_condition(new, SPEC_APPLIED, True, "Applied", applied_message(generation), now, generation)
    new.observed_generation = generation
    for field, value in (extra or {}).items():
        setattr(new, field, value)
    return with_phase(new)


def applied_message(generation: int | None) -> str:
    return f"the children run the spec of generation {generation}"


def waiting_status(status: S, message: str, now: datetime, generation: int | None) -> S:
    """The spec is valid but a referenced ScoreRun has no weights yet."""
    new = with_condition(status, VALID, True, "SpecValid", "", now, generation)
    put_condition(new, CREATED, False, WAITING_FOR_MODEL, message, now, generation)
    new.observed_generation = generation
    return with_phase(new)


def refused_status(status: S, kind: str, now: datetime, generation: int | None,
                   applied: bool) -> S:
    """A spec change after the children exist: recorded, not applied.

    ``applied`` True means the new spec equals the one the children run (a change was
    reverted): SpecApplied goes back to True.
    """
    if applied:
        new = with_condition(status, SPEC_APPLIED, True, "Applied", applied_message(generation), now,
                    generation)
    else:
        message = (
            f"spec changed to generation {generation} while the {kind} is "
            f"{phase_of(status)}; its job keeps running the spec it was created with. "
            f"Delete and re-create the {kind} to run the new spec"
        )
        new = with_condition(status, SPEC_APPLIED, False, SPEC_CHANGE_REFUSED, message, now, generation)
    new.observed_generation = generation
    return new


# --- children --------------------------------------------------------------------------------


def _mirror_child(status: J, child: ChildState, now: datetime, kind: str) -> J:
    new = status.model_copy(deep=True)
    new.conditions = list(new.conditions)  # present in a mirrored status, even if empty
    if child.phase == "Running":
        put_condition(new, RUNNING, True, child.reason, child.message, now)
        if not new.start_time:
            new.start_time = child.start_time or rfc3339(now)
    elif child.phase == "Succeeded":
        put_condition(new, RUNNING, False, "Completed", "", now)
        put_condition(new, SUCCEEDED, True, child.reason, child.message or f"{kind} succeeded", now)
        new.completion_time = child.completion_time or rfc3339(now)
    elif child.phase == "Failed":
        put_condition(new, RUNNING, False, "JobFailed", "", now)
        put_condition(new, FAILED, True, child.reason, child.message or f"{kind} failed", now)
        new.completion_time = child.completion_time or rfc3339(now)
    return new


# --- ScoreRun --------------------------------------------------------------------------------


# What a progress file and a ScoreRun's status have in common (same field names).
_PROGRESS_FIELDS = ("stage", "step", "total_steps", "reward_t1", "reward_t2", "acc_t1",
                    "acc_t2", "last_checkpoint")


def _progress_message(status: ScoreRunStatus) -> str | None:
    cond = get_condition(status, PROGRESSING)
    return None if cond is None else cond.message


def _apply_progress(new: ScoreRunStatus, progress: Progress, now: datetime) -> bool:
    """Copy the progress file into the status; True when the run advanced."""
    before = _progress_message(new), new.last_checkpoint, new.acc_t1, new.acc_t2
    for name in _PROGRESS_FIELDS:
        value = getattr(progress, name)
        if value is not None:
            setattr(new, name, value)
    if progress.versions:
        new.versions = dict(progress.versions)
    after = progress.describe(), new.last_checkpoint, new.acc_t1, new.acc_t2
    advanced = after != before or not condition_true(new, PROGRESSING)
    if advanced:
        new.last_progress_time = rfc3339(now)
        put_condition(new, PROGRESSING, True, "Advancing", progress.describe(), now)
    return advanced


def stall_deadline(status: ScoreRunStatus, stall_timeout: timedelta) -> datetime | None:
    """When a Running run with this status counts as stalled (None: not Running).

    The clock starts at the last observed advance of the progress file, or, before the
    first one, when the operator saw the job Running (loading a model counts against it).
    """
    if phase_of(status) != "Running":
        return None
    running = get_condition(status, RUNNING)
    since = parse_time(status.last_progress_time) or \
        parse_time(running.last_transition_time if running is not None else None)
    return None if since is None else since + stall_timeout


def sync_scorerun_status(status: ScoreRunStatus, *, child: ChildState | None,
                         progress: Progress | None, progress_error: str | None,
                         now: datetime, stall_timeout: timedelta,
                         results_uri: str | None = None) -> ScoreRunStatus:
    """The next status of a ScoreRun from its PyTorchJob, its progress file and the clock.

    ``progress_error`` is set when the file could not be read: nothing is concluded from its
    absence then (no stall is declared while the operator cannot see the store).
    """
    if is_terminal(status) or child is None:
        return status.model_copy(deep=True)
    new = with_phase(_mirror_child(status, child, now, "PyTorchJob"))
    if new.phase == "Pending":
        return new
    if progress_error is not None:
        put_condition(new, PROGRESSING, None, "ProgressUnreadable", progress_error, now)
    elif progress is not None:
        _apply_progress(new, progress, now)
    elif get_condition(new, PROGRESSING) is None:
        put_condition(new, PROGRESSING, None, "NoProgressYet",
             "the trainer has not written progress.json yet", now)
    if new.phase == "Succeeded":
        if results_uri:
            new.results_uri = results_uri
        put_condition(new, PROGRESSING, False, "Completed",
             (progress.describe() if progress else "finished"), now)
    elif new.phase == "Failed":
        if progress is not None and progress.message:
            _add_failure_detail(new, progress.message, now)
    elif progress_error is None:
        deadline = stall_deadline(new, stall_timeout)
        if deadline is not None and now > deadline:
            new = mark_stalled(new, now, stall_timeout)
    return with_phase(new)


def _add_failure_detail(status: ScoreRunStatus, detail: str, now: datetime) -> None:
    """Append the trainer's own message to the Failed condition (once)."""
    failed = get_condition(status, FAILED)
    message = failed.message if failed is not None else ""
    if detail not in message:
        put_condition(status, FAILED, True, failed.reason if failed is not None else "JobFailed",
             f"{message}: {detail}".strip(": "), now)


def mark_stalled(status: ScoreRunStatus, now: datetime,
                 stall_timeout: timedelta) -> ScoreRunStatus:
    """Failed with reason Stalled: the progress file has not advanced within the timeout."""
    last = status.last_progress_time
    where = _progress_message(status) or "no progress file"
    message = (
        f"no progress for more than {_human(stall_timeout)} "
        f"({'last advance at ' + last if last else 'since the job started'}; {where})"
    )
    new = with_condition(status, PROGRESSING, False, STALLED, message, now)
    put_condition(new, RUNNING, False, STALLED, message, now)
    put_condition(new, FAILED, True, STALLED, message, now)
    new.completion_time = rfc3339(now)
    return with_phase(new)


def _human(delta: timedelta) -> str:
    s = int(delta.total_seconds())
    if s % 3600 == 0 and s >= 3600:
        return f"{s // 3600}h"
    if s % 60 == 0 and s >= 60:
        return f"{s // 60}m"
    return f"{s}s"


# --- EvalSuite -------------------------------------------------------------------------------


def sync_evalsuite_status(status: EvalSuiteStatus, *, child: ChildState | None,
                          summary: EvalSummary | None, summary_error: str | None,
                          now: datetime, output_uri: str) -> EvalSuiteStatus:
    """The next status of an EvalSuite from its job and, once it succeeded, its summary.

    A succeeded job whose summary cannot be read (yet) keeps the suite Running, so the
    metrics are not lost to a passing storage error; a summary that does not exist at all
    is recorded as ResultsAvailable=False and the suite still succeeds.
    """
    if is_terminal(status) or child is None:
        return status.model_copy(deep=True)
    if child.phase == "Succeeded" and summary_error is not None:
        new = with_condition(status, RESULTS, None, "SummaryUnreadable", summary_error, now)
        new = _mirror_child(new, ChildState("Running", child.reason, child.message,
                                            child.start_time), now, "job")
        return with_phase(new)
    new = _mirror_child(status, child, now, "evaluation job")
    if child.phase == "Succeeded":
        if summary is None:
            put_condition(new, RESULTS, False, "SummaryMissing",
                 f"{output_uri}/summary.json does not exist", now)
            new.results_uri = output_uri
        else:
            new.summary = summary.to_status()
            new.results_uri = summary.report or output_uri
            n = sum(len(b) for b in summary.models.values())
            put_condition(new, RESULTS, True, "SummaryRead",
                 f"{len(summary.models)} model(s) x benchmarks: {n} result(s)", now)
    return with_phase(new)


# --- CorrectorService ------------------------------------------------------------------------


def sync_correctorservice_status(status: CorrectorServiceStatus,
                                 isvc_status: Mapping[str, Any] | None,
                                 now: datetime) -> CorrectorServiceStatus:
    """Mirror the InferenceService: Ready -> Running with a URL; a failed load -> Failed.

    A CorrectorService is long-running: it is Running while KServe reports Ready and goes
    back to Pending when it is not (e.g. during a rollout). It is Failed only while KServe
    reports that the model failed to load; that clears once a new revision loads.
    """
    new = status.model_copy(deep=True)
    isvc = isvc_status or {}
    ready = next((c for c in isvc.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None:
        value = {"True": True, "False": False}.get(ready.get("status", ""))
        put_condition(new, READY, value, ready.get("reason") or ("Ready" if value else "NotReady"),
             ready.get("message") or "", now)
    if isvc.get("url"):
        new.url = isvc["url"]
    model_status = isvc.get("modelStatus") or {}
    failed_load = (model_status.get("states") or {}).get("targetModelState") == "FailedToLoad" \
        or model_status.get("transitionStatus") == "BlockedByFailedLoad"
    failed = get_condition(new, FAILED)
    if failed_load:
        info = model_status.get("lastFailureInfo") or {}
        put_condition(new, FAILED, True, "ModelLoadFailed",
             info.get("message") or "the model failed to load", now)
    elif failed is not None and failed.reason != INVALID_SPEC:
        drop_condition(new, FAILED)
    if condition_true(new, FAILED):
        new.phase = "Failed"
    elif condition_true(new, READY):
        new.phase = "Running"
    else:
        new.phase = "Pending"
    return new


def changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level keys of two wire statuses whose values differ: the body of a JSON merge
    patch. Keys that disappeared map to None (merge-patch deletion).
    """
    old = old or {}
    diff = {k: v for k, v in new.items() if old.get(k) != v}
    diff.update({k: None for k in old if k not in new})
    return diff
