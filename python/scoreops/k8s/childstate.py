"""A child job's status reduced to what its owner mirrors (PyTorchJob or batch Job)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scoreops.api.base import Phase


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
