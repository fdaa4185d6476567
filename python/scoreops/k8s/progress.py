"""The small files jobs write next to their results, and how the operator reads them.

- A ScoreRun's trainer writes ``<spec.output.uri>/progress.json`` atomically after each step::

      {"phase": "Running", "stage": "stage1", "step": 12, "total_steps": 18,
       "reward_t1": 0.4, "reward_t2": 0.5, "acc_t1": null, "acc_t2": null,
       "last_checkpoint": "s3://.../checkpoints/step-000012",
       "updated": "2026-01-01T00:00:00Z", "message": "", "versions": {"torch": "2.13.0"}}

- An EvalSuite's job writes ``<spec.output.uri>/summary.json`` at the end::

      {"models": {MODEL: {BENCHMARK: {"acc_t1": .., "acc_t2": .., "delta": ..,
                                      "delta_i2c": .., "delta_c2i": .., "n": ..}}},
       "report": "s3://.../report.md"}

The operator reads them with its own credentials through :mod:`scoreops.storage` (boto3 is
imported on the first ``s3://`` read, not at operator start).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

PROGRESS_FILE = "progress.json"
SUMMARY_FILE = "summary.json"


class ProgressFileError(ValueError):
    """The file exists but is not a valid progress/summary document."""


class Progress(BaseModel):
    """One snapshot of a training run, as written by ``scoreops.train``."""

    model_config = ConfigDict(extra="ignore")

    phase: Literal["Running", "Succeeded", "Failed"] = "Running"
    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    reward_t1: float | None = None
    reward_t2: float | None = None
    acc_t1: float | None = None
    acc_t2: float | None = None
    last_checkpoint: str | None = None
    updated: str | None = None
    message: str = ""
    versions: dict[str, str] = {}

    def describe(self) -> str:
        """A one-line summary: what changes whenever the run advances."""
        parts = []
        if self.step is not None:
            parts.append(f"step {self.step}" + (f"/{self.total_steps}" if self.total_steps else ""))
        if self.stage:
            parts.append(f"({self.stage})")
        text = " ".join(parts) or "started"
        return f"{text}: {self.message}" if self.message else text


class BenchmarkMetrics(BaseModel):
    model_config = ConfigDict(extra="ignore")

    acc_t1: float | None = None
    acc_t2: float | None = None
    delta: float | None = None
    delta_i2c: float | None = None
    delta_c2i: float | None = None
    n: int | None = None


class EvalSummary(BaseModel):
    """The metrics of an EvalSuite: model -> benchmark -> metrics."""

    model_config = ConfigDict(extra="ignore")

    models: dict[str, dict[str, BenchmarkMetrics]] = {}
    report: str | None = None

    def to_status(self) -> dict[str, Any]:
        """``status.summary``: camelCase keys as in the CRD (accT1, accT2, delta, deltaIC, ...)."""
        out: dict[str, Any] = {}
        for model, benches in self.models.items():
            out[model] = {
                bench: {k: v for k, v in {
                    "accT1": m.acc_t1, "accT2": m.acc_t2, "delta": m.delta,
                    "deltaIC": m.delta_i2c, "deltaCI": m.delta_c2i, "n": m.n,
                }.items() if v is not None}
                for bench, m in benches.items()
            }
        return out


def join_uri(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


def parse_progress(doc: Any) -> Progress:
    try:
        return Progress.model_validate(doc)
    except ValidationError as exc:
        raise ProgressFileError(f"not a valid progress file: {exc}") from None


def parse_summary(doc: Any) -> EvalSummary:
    try:
        return EvalSummary.model_validate(doc)
    except ValidationError as exc:
        raise ProgressFileError(f"not a valid summary file: {exc}") from None


def _read(uri: str) -> Any | None:
    from scoreops import storage

    try:
        return storage.read_json(uri)
    except storage.NotFoundError:
        return None


def read_progress(output_uri: str) -> Progress | None:
    """The run's progress, or None while the file does not exist yet.

    Raises :class:`scoreops.storage.StorageError` when the store cannot be read and
    :class:`ProgressFileError` when the file is malformed.
    """
    doc = _read(join_uri(output_uri, PROGRESS_FILE))
    return None if doc is None else parse_progress(doc)


def read_summary(output_uri: str) -> EvalSummary | None:
    """An EvalSuite's summary, or None while it does not exist."""
    doc = _read(join_uri(output_uri, SUMMARY_FILE))
    return None if doc is None else parse_summary(doc)
