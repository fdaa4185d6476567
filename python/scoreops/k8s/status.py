"""Status logic: pure functions from what the operator observed to the next ``.status``.

Every function takes the current status (a wire-format dict, camelCase) and returns a new
one; the caller writes it only when it differs, so a reconcile that observes nothing new
writes nothing. Time is an argument (``now``), never read here.

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
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from scoreops.api import FieldError
from scoreops.k8s.progress import EvalSummary, Progress

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
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

Status = dict[str, Any]


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


def get_condition(status: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def condition_true(status: Mapping[str, Any] | None, type_: str) -> bool:
    cond = get_condition(status, type_)
    return cond is not None and cond.get("status") == "True"


def set_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str,
                  status: bool | None, reason: str, message: str, now: datetime,
                  generation: int | None = None) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set (added or replaced, order kept).

    ``lastTransitionTime`` moves only when the status flips, as Kubernetes conventions ask.
    ``status`` None means Unknown.
    """
    value = "Unknown" if status is None else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        since = cond.get("lastTransitionTime") if cond.get("status") == value else None
        out.append(_condition(type_, value, reason, message, since or rfc3339(now), generation,
                              cond.get("observedGeneration")))
    if not found:
        out.append(_condition(type_, value, reason, message, rfc3339(now), generation, None))
    return out


def _condition(type_: str, value: str, reason: str, message: str, since: str,
               generation: int | None, old_generation: int | None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": type_, "status": value, "reason": reason}
    if message:  # optional by convention; an empty one is left out
        cond["message"] = message
    cond["lastTransitionTime"] = since
    gen = generation if generation is not None else old_generation
    if gen is not None:
        cond["observedGeneration"] = gen
    return cond


def _with(status: Mapping[str, Any] | None, type_: str, value: bool | None, reason: str,
          message: str, now: datetime, generation: int | None = None) -> Status:
    new = copy.deepcopy(dict(status or {}))
    new["conditions"] = set_condition(new.get("conditions"), type_, value, reason, message, now,
                                      generation)
    return new


def phase_of(status: Mapping[str, Any] | None) -> str:
    return str((status or {}).get("phase") or "Pending")


def is_terminal(status: Mapping[str, Any] | None) -> bool:
    return phase_of(status) in TERMINAL


def derive_phase(status: Mapping[str, Any]) -> Phase:
    if condition_true(status, FAILED):
        return "Failed"
    if condition_true(status, SUCCEEDED):
        return "Succeeded"
    if condition_true(status, RUNNING):
        return "Running"
    return "Pending"


def _finish(status: Status) -> Status:
    status["phase"] = derive_phase(status)
    return status


# --- what the handlers record ------------------------------------------------------------------


def format_errors(errors: Iterable[FieldError]) -> str:
    return "; ".join(str(e) for e in errors)


def invalid_status(status: Mapping[str, Any] | None, errors: Sequence[FieldError],
                   now: datetime, generation: int | None) -> Status:
    """The spec cannot run: Failed with reason InvalidSpec, each field named."""
    message = format_errors(errors)
    new = _with(status, VALID, False, INVALID_SPEC, message, now, generation)
    new["conditions"] = set_condition(new["conditions"], FAILED, True, INVALID_SPEC, message,
                                      now, generation)
    new["observedGeneration"] = generation
    return _finish(new)


def created_status(status: Mapping[str, Any] | None, children: Sequence[Mapping[str, Any]],
                   now: datetime, generation: int | None,
                   extra: Mapping[str, Any] | None = None) -> Status:
    """Children applied for ``generation``: Valid, Created and SpecApplied all True.

    A spec that was InvalidSpec before and is valid now clears that failure.
    """
    names = ", ".join(f"{c['kind']} {c['metadata']['name']}" for c in children)
    new = _with(status, VALID, True, "SpecValid", "", now, generation)
    failed = get_condition(new, FAILED)
    if failed is not None and failed.get("reason") == INVALID_SPEC:
        new["conditions"] = [c for c in new["conditions"] if c["type"] != FAILED]
    new["conditions"] = set_condition(new["conditions"], CREATED, True, "ChildrenApplied",
                                      f"applied {names}", now, generation)
    new["conditions"] = set_condition(new["conditions"], SPEC_APPLIED, True, "Applied",
                                      applied_message(generation), now, generation)
    new["observedGeneration"] = generation
    new.update(extra or {})
    return _finish(new)


def applied_message(generation: int | None) -> str:
    return f"the children run the spec of generation {generation}"


def waiting_status(status: Mapping[str, Any] | None, message: str, now: datetime,
                   generation: int | None) -> Status:
    """The spec is valid but a referenced ScoreRun has no weights yet."""
    new = _with(status, VALID, True, "SpecValid", "", now, generation)
    new["conditions"] = set_condition(new["conditions"], CREATED, False, WAITING_FOR_MODEL,
                                      message, now, generation)
    new["observedGeneration"] = generation
    return _finish(new)


def refused_status(status: Mapping[str, Any] | None, kind: str, now: datetime,
                   generation: int | None, applied: bool) -> Status:
    """A spec change after the children exist: recorded, not applied.

    ``applied`` True means the new spec equals the one the children run (a change was
    reverted): SpecApplied goes back to True.
    """
    if applied:
        new = _with(status, SPEC_APPLIED, True, "Applied", applied_message(generation), now,
                    generation)
    else:
        message = (
            f"spec changed to generation {generation} while the {kind} is "
            f"{phase_of(status)}; its job keeps running the spec it was created with. "
            f"Delete and re-create the {kind} to run the new spec"
        )
        new = _with(status, SPEC_APPLIED, False, SPEC_CHANGE_REFUSED, message, now, generation)
    new["observedGeneration"] = generation
    return new


# --- children --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildState:
    """A job's state reduced to what the owner mirrors."""

    phase: Phase
    reason: str
    message: str = ""
    start_time: str | None = None
    completion_time: str | None = None


def _true_conditions(status: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (status or {}).get("conditions") or []
            if c.get("status") == "True"}


def pytorchjob_state(status: Mapping[str, Any] | None) -> ChildState:
    """From a PyTorchJob's ``status.conditions`` (Created/Running/Restarting/Succeeded/Failed)."""
    true = _true_conditions(status)
    start = (status or {}).get("startTime")
    done = (status or {}).get("completionTime")
    for ctype, phase in (("Succeeded", "Succeeded"), ("Failed", "Failed"),
                         ("Restarting", "Running"), ("Running", "Running"),
                         ("Created", "Pending")):
        if ctype in true:
            c = true[ctype]
            return ChildState(phase, c.get("reason") or f"PyTorchJob{ctype}",  # type: ignore[arg-type]
                              c.get("message") or "", start, done)
    return ChildState("Pending", "PyTorchJobPending", "", start, done)


def batch_job_state(status: Mapping[str, Any] | None) -> ChildState:
    """From a batch/v1 Job's status (conditions Complete/Failed, ``active`` pods)."""
    true = _true_conditions(status)
    start = (status or {}).get("startTime")
    done = (status or {}).get("completionTime")
    if "Complete" in true:
        c = true["Complete"]
        return ChildState("Succeeded", c.get("reason") or "JobComplete", c.get("message") or "",
                          start, done)
    if "Failed" in true:
        c = true["Failed"]
        return ChildState("Failed", c.get("reason") or "JobFailed", c.get("message") or "",
                          start, done)
    if (status or {}).get("active"):
        return ChildState("Running", "JobRunning", "", start, done)
    return ChildState("Pending", "JobPending", "", start, done)


def _mirror_child(status: Mapping[str, Any], child: ChildState, now: datetime,
                  kind: str) -> Status:
    new = copy.deepcopy(dict(status))
    conds = new.get("conditions") or []
    if child.phase == "Running":
        conds = set_condition(conds, RUNNING, True, child.reason, child.message, now)
        if not new.get("startTime"):
            new["startTime"] = child.start_time or rfc3339(now)
    elif child.phase == "Succeeded":
        conds = set_condition(conds, RUNNING, False, "Completed", "", now)
        conds = set_condition(conds, SUCCEEDED, True, child.reason,
                              child.message or f"{kind} succeeded", now)
        new["completionTime"] = child.completion_time or rfc3339(now)
    elif child.phase == "Failed":
        conds = set_condition(conds, RUNNING, False, "JobFailed", "", now)
        conds = set_condition(conds, FAILED, True, child.reason,
                              child.message or f"{kind} failed", now)
        new["completionTime"] = child.completion_time or rfc3339(now)
    new["conditions"] = conds
    return new


# --- ScoreRun --------------------------------------------------------------------------------


_PROGRESS_FIELDS = {
    "stage": "stage", "step": "step", "total_steps": "totalSteps", "reward_t1": "rewardT1",
    "reward_t2": "rewardT2", "acc_t1": "accT1", "acc_t2": "accT2",
    "last_checkpoint": "lastCheckpoint",
}


def _apply_progress(new: Status, progress: Progress, now: datetime) -> bool:
    """Copy the progress file into the status; True when the run advanced."""
    before = (get_condition(new, PROGRESSING) or {}).get("message"), new.get("lastCheckpoint"), \
        new.get("accT1"), new.get("accT2")
    for src, dst in _PROGRESS_FIELDS.items():
        value = getattr(progress, src)
        if value is not None:
            new[dst] = value
    if progress.versions:
        new["versions"] = dict(progress.versions)
    after = progress.describe(), new.get("lastCheckpoint"), new.get("accT1"), new.get("accT2")
    advanced = after != before or get_condition(new, PROGRESSING) is None or \
        (get_condition(new, PROGRESSING) or {}).get("status") != "True"
    if advanced:
        new["lastProgressTime"] = rfc3339(now)
        new["conditions"] = set_condition(new.get("conditions"), PROGRESSING, True, "Advancing",
                                          progress.describe(), now)
    return advanced


def stall_deadline(status: Mapping[str, Any], stall_timeout: timedelta) -> datetime | None:
    """When a Running run with this status counts as stalled (None: not Running).

    The clock starts at the last observed advance of the progress file, or, before the
    first one, when the operator saw the job Running (loading a model counts against it).
    """
    if phase_of(status) != "Running":
        return None
    running = get_condition(status, RUNNING) or {}
    since = parse_time(status.get("lastProgressTime")) or \
        parse_time(running.get("lastTransitionTime"))
    return None if since is None else since + stall_timeout


def sync_scorerun_status(status: Mapping[str, Any], *, child: ChildState | None,
                         progress: Progress | None, progress_error: str | None,
                         now: datetime, stall_timeout: timedelta,
                         results_uri: str | None = None) -> Status:
    """The next status of a ScoreRun from its PyTorchJob, its progress file and the clock.

    ``progress_error`` is set when the file could not be read: nothing is concluded from its
    absence then (no stall is declared while the operator cannot see the store).
    """
    if is_terminal(status) or child is None:
        return copy.deepcopy(dict(status))
    new = _mirror_child(status, child, now, "PyTorchJob")
    new = _finish(new)
    if new["phase"] == "Pending":
        return new
    if progress_error is not None:
        new["conditions"] = set_condition(new["conditions"], PROGRESSING, None,
                                          "ProgressUnreadable", progress_error, now)
    elif progress is not None:
        _apply_progress(new, progress, now)
    elif get_condition(new, PROGRESSING) is None:
        new["conditions"] = set_condition(new["conditions"], PROGRESSING, None, "NoProgressYet",
                                          "the trainer has not written progress.json yet", now)
    if new["phase"] == "Succeeded":
        if results_uri:
            new["resultsUri"] = results_uri
        new["conditions"] = set_condition(new["conditions"], PROGRESSING, False, "Completed",
                                          (progress.describe() if progress else "finished"), now)
    elif new["phase"] == "Failed":
        if progress is not None and progress.message:
            failed = get_condition(new, FAILED) or {}
            if progress.message not in failed.get("message", ""):
                new["conditions"] = set_condition(
                    new["conditions"], FAILED, True, failed.get("reason", "JobFailed"),
                    f"{failed.get('message', '')}: {progress.message}".strip(": "), now)
    elif progress_error is None:
        deadline = stall_deadline(new, stall_timeout)
        if deadline is not None and now > deadline:
            new = mark_stalled(new, now, stall_timeout)
    return _finish(new)


def mark_stalled(status: Mapping[str, Any], now: datetime, stall_timeout: timedelta) -> Status:
    """Failed with reason Stalled: the progress file has not advanced within the timeout."""
    last = status.get("lastProgressTime")
    where = (get_condition(status, PROGRESSING) or {}).get("message") or "no progress file"
    message = (
        f"no progress for more than {_human(stall_timeout)} "
        f"({'last advance at ' + last if last else 'since the job started'}; {where})"
    )
    new = _with(status, PROGRESSING, False, STALLED, message, now)
    new["conditions"] = set_condition(new["conditions"], RUNNING, False, STALLED, message, now)
    new["conditions"] = set_condition(new["conditions"], FAILED, True, STALLED, message, now)
    new["completionTime"] = rfc3339(now)
    return _finish(new)


def _human(delta: timedelta) -> str:
    s = int(delta.total_seconds())
    if s % 3600 == 0 and s >= 3600:
        return f"{s // 3600}h"
    if s % 60 == 0 and s >= 60:
        return f"{s // 60}m"
    return f"{s}s"


# --- EvalSuite -------------------------------------------------------------------------------


def sync_evalsuite_status(status: Mapping[str, Any], *, child: ChildState | None,
                          summary: EvalSummary | None, summary_error: str | None,
                          now: datetime, output_uri: str) -> Status:
    """The next status of an EvalSuite from its job and, once it succeeded, its summary.

    A succeeded job whose summary cannot be read (yet) keeps the suite Running, so the
    metrics are not lost to a passing storage error; a summary that does not exist at all
    is recorded as ResultsAvailable=False and the suite still succeeds.
    """
    if is_terminal(status) or child is None:
        return copy.deepcopy(dict(status))
    if child.phase == "Succeeded" and summary_error is not None:
        new = _with(status, RESULTS, None, "SummaryUnreadable", summary_error, now)
        new = _mirror_child(new, ChildState("Running", child.reason, child.message,
                                            child.start_time), now, "job")
        return _finish(new)
    new = _mirror_child(status, child, now, "evaluation job")
    if child.phase == "Succeeded":
        if summary is None:
            new["conditions"] = set_condition(new["conditions"], RESULTS, False, "SummaryMissing",
                                              f"{output_uri}/summary.json does not exist", now)
            new["resultsUri"] = output_uri
        else:
            new["summary"] = summary.to_status()
            new["resultsUri"] = summary.report or output_uri
            n = sum(len(b) for b in summary.models.values())
            new["conditions"] = set_condition(
                new["conditions"], RESULTS, True, "SummaryRead",
                f"{len(summary.models)} model(s) x benchmarks: {n} result(s)", now)
    return _finish(new)


# --- CorrectorService ------------------------------------------------------------------------


def sync_correctorservice_status(status: Mapping[str, Any],
                                 isvc_status: Mapping[str, Any] | None,
                                 now: datetime) -> Status:
    """Mirror the InferenceService: Ready -> Running with a URL; a failed load -> Failed.

    A CorrectorService is long-running: it is Running while KServe reports Ready and goes
    back to Pending when it is not (e.g. during a rollout). It is Failed only while KServe
    reports that the model failed to load; that clears once a new revision loads.
    """
    new = copy.deepcopy(dict(status))
    isvc = isvc_status or {}
    ready = next((c for c in isvc.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None:
        value = {"True": True, "False": False}.get(ready.get("status", ""))
        new["conditions"] = set_condition(new.get("conditions"), READY, value,
                                          ready.get("reason") or ("Ready" if value else "NotReady"),
                                          ready.get("message") or "", now)
    if isvc.get("url"):
        new["url"] = isvc["url"]
    model_state = ((isvc.get("modelStatus") or {}).get("states") or {}).get("targetModelState")
    failed_load = model_state == "FailedToLoad" or \
        (isvc.get("modelStatus") or {}).get("transitionStatus") == "BlockedByFailedLoad"
    if failed_load:
        info = (isvc.get("modelStatus") or {}).get("lastFailureInfo") or {}
        new["conditions"] = set_condition(new.get("conditions"), FAILED, True, "ModelLoadFailed",
                                          info.get("message") or "the model failed to load", now)
    elif get_condition(new, FAILED) and get_condition(new, FAILED).get("reason") != INVALID_SPEC:  # type: ignore[union-attr]
        new["conditions"] = [c for c in new["conditions"] if c["type"] != FAILED]
    if condition_true(new, FAILED):
        new["phase"] = "Failed"
    elif condition_true(new, READY):
        new["phase"] = "Running"
    else:
        new["phase"] = "Pending"
    return new


def changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status keys whose values differ: the body of a JSON merge patch.

    Keys that disappeared map to None (merge-patch deletion).
    """
    old = old or {}
    diff = {k: v for k, v in new.items() if old.get(k) != v}
    diff.update({k: None for k in old if k not in new})
    return diff
