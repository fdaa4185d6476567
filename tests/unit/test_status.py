"""Status logic: conditions, child mirroring, progress, stall detection, summaries.

The transitions work on the typed status models; these tests feed them wire-format statuses
(camelCase dicts, as stored by the API server) and check the wire format they produce.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scoreops.api import FieldError
from scoreops.api.correctorservice import CorrectorServiceStatus
from scoreops.api.evalsuite import EvalSuiteStatus
from scoreops.api.scorerun import ScoreRunStatus
from scoreops.k8s import status as st
from scoreops.k8s.progress import (
    EvalSummary,
    Progress,
    ProgressFileError,
    parse_progress,
    parse_summary,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
STALL = timedelta(minutes=30)
CHILDREN = [{"kind": "ConfigMap", "metadata": {"name": "r-spec"}},
            {"kind": "PyTorchJob", "metadata": {"name": "r-train"}}]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def job(*types: str, **extra: Any) -> dict[str, Any]:
    """A PyTorchJob status whose listed conditions are True (the last one newest)."""
    conds = [{"type": t, "status": "True", "reason": f"PyTorchJob{t}", "message": f"job {t}"}
             for t in types]
    return {"conditions": conds, **extra}


def run(status: dict[str, Any]) -> ScoreRunStatus:
    return st.parse(ScoreRunStatus, status)


def created() -> dict[str, Any]:
    return st.to_wire(st.created_status(ScoreRunStatus(), CHILDREN, T0, 1,
                                        {"job_name": "r-train", "total_steps": 18}))


def progress(step: int, **kw: Any) -> Progress:
    return parse_progress({"phase": "Running", "stage": "stage1", "step": step,
                           "total_steps": 18, **kw})


def sync(status: dict[str, Any], child: dict[str, Any], now: datetime,
         prog: Progress | None = None, error: str | None = None) -> dict[str, Any]:
    return st.to_wire(st.sync_scorerun_status(
        run(status), child=st.pytorchjob_state(child), progress=prog, progress_error=error,
        now=now, stall_timeout=STALL, results_uri="s3://runs/r"))


def get(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    c = get(status, type_)
    assert c is not None, f"no {type_} condition in {status.get('conditions')}"
    return c


# --- conditions ------------------------------------------------------------------------------


def test_set_condition_moves_the_transition_time_only_on_a_flip() -> None:
    typed = st.set_condition([], "Ready", False, "Starting", "", T0)
    typed = st.set_condition(typed, "Ready", False, "StillStarting", "loading", at(5))
    conds = [st.to_wire(c) for c in typed]
    assert conds == [{"type": "Ready", "status": "False", "reason": "StillStarting",
                      "message": "loading", "lastTransitionTime": "2026-01-01T12:00:00Z"}]
    typed = st.set_condition(typed, "Ready", True, "Up", "", at(7), generation=3)
    conds = [st.to_wire(c) for c in typed]
    assert conds[0]["lastTransitionTime"] == "2026-01-01T12:07:00Z"
    assert conds[0]["observedGeneration"] == 3
    assert "message" not in conds[0]  # empty messages are left out
    typed = st.set_condition(typed, "Other", None, "Why", "m", at(8))
    conds = [st.to_wire(c) for c in typed]
    assert [c["type"] for c in conds] == ["Ready", "Other"]
    assert conds[1]["status"] == "Unknown"


def test_changed_is_a_merge_patch() -> None:
    old = {"phase": "Running", "step": 3, "stage": "stage1"}
    new = {"phase": "Running", "step": 4}
    assert st.changed(old, new) == {"step": 4, "stage": None}
    assert st.changed(new, dict(new)) == {}


# --- child states ----------------------------------------------------------------------------


@pytest.mark.parametrize(("types", "phase"), [
    ((), "Pending"),
    (("Created",), "Pending"),
    (("Created", "Running"), "Running"),
    (("Created", "Restarting"), "Running"),
    (("Created", "Succeeded"), "Succeeded"),
    (("Created", "Failed"), "Failed"),
])
def test_pytorchjob_conditions_map_to_phases(types: tuple[str, ...], phase: str) -> None:
    assert st.pytorchjob_state(job(*types)).phase == phase


def test_pytorchjob_false_conditions_do_not_count() -> None:
    status = {"conditions": [{"type": "Running", "status": "False", "reason": "X"},
                             {"type": "Succeeded", "status": "True", "reason": "Done"}]}
    state = st.pytorchjob_state(status)
    assert (state.phase, state.reason) == ("Succeeded", "Done")


def test_batch_job_states() -> None:
    assert st.batch_job_state(None).phase == "Pending"
    assert st.batch_job_state({"active": 1}).phase == "Running"
    assert st.batch_job_state({"conditions": [
        {"type": "Complete", "status": "True"}]}).phase == "Succeeded"
    failed = st.batch_job_state({"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}]})
    assert (failed.phase, failed.reason) == ("Failed", "BackoffLimitExceeded")


# --- what the handlers record ------------------------------------------------------------------


def test_invalid_spec_fails_with_the_fields_named() -> None:
    errors = [FieldError("spec.rollout.engine", "vllm needs GPUs"),
              FieldError("spec.output.uri", "must be s3://")]
    status = st.to_wire(st.invalid_status(ScoreRunStatus(), errors, T0, generation=1))
    assert status["phase"] == "Failed"
    failed = cond(status, st.FAILED)
    assert failed["reason"] == st.INVALID_SPEC
    assert "spec.rollout.engine" in failed["message"] and "spec.output.uri" in failed["message"]
    assert cond(status, st.VALID)["status"] == "False"
    assert status["observedGeneration"] == 1
    # fixing the spec clears the failure
    fixed = st.to_wire(st.created_status(run(status), CHILDREN, at(1), 2))
    assert fixed["phase"] == "Pending"
    assert get(fixed, st.FAILED) is None
    assert cond(fixed, st.VALID)["status"] == "True"
    assert cond(fixed, st.CREATED)["message"] == "applied ConfigMap r-spec, PyTorchJob r-train"


def test_created_status_is_stable_when_nothing_changed() -> None:
    first = created()
    again = st.to_wire(st.created_status(run(first), CHILDREN, at(10), 1,
                                         {"job_name": "r-train", "total_steps": 18}))
    assert st.changed(first, again) == {}


def test_a_refused_change_is_recorded_and_a_revert_clears_it() -> None:
    running = sync(created(), job("Created", "Running"), at(1))
    refused = st.to_wire(st.refused_status(run(running), "ScoreRun", at(2), 2, applied=False))
    spec_cond = cond(refused, st.SPEC_APPLIED)
    assert (spec_cond["status"], spec_cond["reason"]) == ("False", st.SPEC_CHANGE_REFUSED)
    assert "generation 2" in spec_cond["message"] and "Running" in spec_cond["message"]
    assert refused["phase"] == "Running" and refused["observedGeneration"] == 2
    reverted = st.to_wire(st.refused_status(run(refused), "ScoreRun", at(3), 3, applied=True))
    assert cond(reverted, st.SPEC_APPLIED)["status"] == "True"


# --- ScoreRun sync ---------------------------------------------------------------------------


def test_running_job_and_progress_are_mirrored() -> None:
    status = sync(created(), job("Created", "Running"), at(1),
                  progress(12, reward_t1=0.4, reward_t2=0.5,
                           last_checkpoint="s3://runs/r/checkpoints/step-000012",
                           versions={"torch": "2.13.0"}))
    assert status["phase"] == "Running"
    assert (status["stage"], status["step"], status["totalSteps"]) == ("stage1", 12, 18)
    assert (status["rewardT1"], status["rewardT2"]) == (0.4, 0.5)
    assert status["lastCheckpoint"] == "s3://runs/r/checkpoints/step-000012"
    assert status["versions"] == {"torch": "2.13.0"}
    assert status["lastProgressTime"] == "2026-01-01T12:01:00Z"
    assert cond(status, st.PROGRESSING)["message"] == "step 12/18 (stage1)"
    assert cond(status, st.RUNNING)["reason"] == "PyTorchJobRunning"
    assert "accT2" not in status  # nulls in the file do not appear


def test_pending_job_leaves_the_run_pending_and_reads_nothing() -> None:
    status = sync(created(), job("Created"), at(600))
    assert status["phase"] == "Pending"
    assert get(status, st.PROGRESSING) is None


def test_a_run_that_stops_advancing_is_stalled() -> None:
    status = sync(created(), job("Created", "Running"), at(0), progress(3))
    status = sync(status, job("Created", "Running"), at(29), progress(3))
    assert status["phase"] == "Running"
    assert status["lastProgressTime"] == "2026-01-01T12:00:00Z"  # not advanced: unchanged
    status = sync(status, job("Created", "Running"), at(31), progress(3))
    assert status["phase"] == "Failed"
    failed = cond(status, st.FAILED)
    assert failed["reason"] == st.STALLED
    assert "30m" in failed["message"] and "step 3/18" in failed["message"]
    assert cond(status, st.PROGRESSING)["status"] == "False"
    # final: a later "Running" from the job does not revive it
    assert sync(status, job("Created", "Running"), at(40), progress(4)) == status


def test_advancing_resets_the_stall_clock() -> None:
    status = sync(created(), job("Created", "Running"), at(0), progress(3))
    status = sync(status, job("Created", "Running"), at(25), progress(4))
    status = sync(status, job("Created", "Running"), at(50), progress(4))
    assert status["phase"] == "Running"
    assert status["lastProgressTime"] == "2026-01-01T12:25:00Z"
    # a new message at the same step (e.g. the final evaluation) counts as progress too
    status = sync(status, job("Created", "Running"), at(54), progress(4, message="evaluating"))
    status = sync(status, job("Created", "Running"), at(80), progress(4, message="evaluating"))
    assert status["phase"] == "Running"


def test_no_progress_file_at_all_stalls_from_when_the_job_ran() -> None:
    status = sync(created(), job("Created", "Running"), at(0))
    assert cond(status, st.PROGRESSING)["reason"] == "NoProgressYet"
    assert sync(status, job("Created", "Running"), at(29))["phase"] == "Running"
    stalled = sync(status, job("Created", "Running"), at(31))
    assert cond(stalled, st.FAILED)["reason"] == st.STALLED
    assert "since the job started" in cond(stalled, st.FAILED)["message"]


def test_an_unreadable_store_never_declares_a_stall() -> None:
    status = sync(created(), job("Created", "Running"), at(0), progress(3))
    status = sync(status, job("Created", "Running"), at(90), error="S3 unreachable")
    assert status["phase"] == "Running"
    progressing = cond(status, st.PROGRESSING)
    assert (progressing["status"], progressing["reason"]) == ("Unknown", "ProgressUnreadable")


def test_success_records_results_and_final_progress() -> None:
    status = sync(created(), job("Created", "Running"), at(0), progress(12))
    done = sync(status, job("Created", "Succeeded", completionTime="2026-01-01T13:00:00Z"),
                at(61), progress(18, stage="stage2", acc_t1=0.5, acc_t2=0.625))
    assert done["phase"] == "Succeeded"
    assert (done["step"], done["stage"], done["accT2"]) == (18, "stage2", 0.625)
    assert done["resultsUri"] == "s3://runs/r"
    assert done["completionTime"] == "2026-01-01T13:00:00Z"
    assert cond(done, st.RUNNING)["status"] == "False"
    assert cond(done, st.SUCCEEDED)["reason"] == "PyTorchJobSucceeded"


def test_failure_carries_the_trainer_message() -> None:
    status = sync(created(), job("Created", "Running"), at(0), progress(2))
    failed = sync(status, job("Created", "Failed"), at(5),
                  parse_progress({"phase": "Failed", "step": 2, "message": "CUDA OOM"}))
    assert failed["phase"] == "Failed"
    assert cond(failed, st.FAILED)["message"] == "job Failed: CUDA OOM"


def test_stall_deadline() -> None:
    status = sync(created(), job("Created", "Running"), at(0), progress(1))
    assert st.stall_deadline(run(status), STALL) == at(30)
    assert st.stall_deadline(run(created()), STALL) is None


# --- progress and summary files --------------------------------------------------------------


def test_progress_file_is_validated() -> None:
    p = parse_progress({"phase": "Running", "step": 1, "unknown_future_field": 1})
    assert p.step == 1 and p.describe() == "step 1"
    with pytest.raises(ProgressFileError):
        parse_progress({"phase": "Exploded"})
    with pytest.raises(ProgressFileError):
        parse_progress({"step": "twelve"})


def test_summary_becomes_camelcase_status() -> None:
    summary = parse_summary({
        "models": {"base": {"gsm8k": {"acc_t1": 0.5, "acc_t2": 0.625, "delta": 0.125,
                                      "delta_i2c": 0.25, "delta_c2i": 0.125, "n": 8}}},
        "report": "s3://evals/x/report.md",
    })
    assert summary.to_status() == {"base": {"gsm8k": {
        "accT1": 0.5, "accT2": 0.625, "delta": 0.125, "deltaIC": 0.25, "deltaCI": 0.125, "n": 8}}}


def _eval_sync(status: dict[str, Any], child: st.ChildState, summary: EvalSummary | None,
               error: str | None = None) -> dict[str, Any]:
    return st.to_wire(st.sync_evalsuite_status(
        st.parse(EvalSuiteStatus, status), child=child, summary=summary, summary_error=error,
        now=at(1), output_uri="s3://evals/x"))


def test_evalsuite_success_reads_the_summary_and_waits_for_a_readable_store() -> None:
    start = st.to_wire(st.created_status(EvalSuiteStatus(), CHILDREN, T0, 1))
    summary = parse_summary({"models": {"m": {"gsm8k": {"acc_t1": 0.5, "n": 2}}},
                             "report": "s3://evals/x/report.md"})
    done = st.ChildState("Succeeded", "JobComplete")
    waiting = _eval_sync(start, done, None, error="timeout")
    assert waiting["phase"] == "Running"
    assert cond(waiting, st.RESULTS)["reason"] == "SummaryUnreadable"
    ok = _eval_sync(waiting, done, summary)
    assert ok["phase"] == "Succeeded"
    assert ok["summary"] == {"m": {"gsm8k": {"accT1": 0.5, "n": 2}}}
    assert ok["resultsUri"] == "s3://evals/x/report.md"
    missing = _eval_sync(start, done, None)
    assert missing["phase"] == "Succeeded"
    assert cond(missing, st.RESULTS)["status"] == "False"


# --- CorrectorService ------------------------------------------------------------------------


def test_corrector_service_follows_kserve_ready() -> None:
    def follow(status: dict[str, Any], isvc: dict[str, Any], now: datetime) -> dict[str, Any]:
        return st.to_wire(st.sync_correctorservice_status(
            st.parse(CorrectorServiceStatus, status), isvc, now))

    start = st.to_wire(st.created_status(CorrectorServiceStatus(), CHILDREN, T0, 1))
    pending = follow(start, {"conditions": [
        {"type": "Ready", "status": "False", "reason": "PredictorNotReady"}]}, at(1))
    assert pending["phase"] == "Pending"
    ready = follow(pending, {
        "url": "http://c.serving.example.com",
        "conditions": [{"type": "Ready", "status": "True"}]}, at(2))
    assert (ready["phase"], ready["url"]) == ("Running", "http://c.serving.example.com")
    broken = follow(ready, {
        "conditions": [{"type": "Ready", "status": "False"}],
        "modelStatus": {"states": {"targetModelState": "FailedToLoad"},
                        "lastFailureInfo": {"message": "no config.json"}}}, at(3))
    assert broken["phase"] == "Failed"
    assert cond(broken, st.FAILED)["message"] == "no config.json"
    healed = follow(broken, {
        "conditions": [{"type": "Ready", "status": "True"}]}, at(4))
    assert healed["phase"] == "Running" and get(healed, st.FAILED) is None
