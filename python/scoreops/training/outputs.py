"""What a run writes beside its checkpoints: ``progress.json`` (which the operator mirrors
into the resource's status), ``metrics.jsonl`` and TensorBoard events. Rank 0 writes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoreops.api.base import now_rfc3339

if TYPE_CHECKING:
    from scoreops.api.scorerun import ScoreRun
    from scoreops.training.context import DistEnv

__all__ = ["RunOutputs"]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("scoreops", "torch", "transformers", "vllm", "deepspeed"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


class RunOutputs:
    """The files of one run under ``output`` (``spec.output.uri`` unless overridden)."""

    def __init__(self, run: ScoreRun, output: str, dist: DistEnv) -> None:
        self.run = run
        self.output = output
        self.dist = dist
        self.last_checkpoint: str | None = None
        """The newest complete checkpoint's URI, as progress reports it."""
        self._tb_dir: Path | None = None

    def uri(self, *parts: str) -> str:
        """A URI under the run's output."""
        from scoreops import storage

        return storage.join(self.output, *parts)

    def write_progress(self, phase: str, *, step: int, stage: str | None,
                       message: str = "", last: dict[str, Any] | None = None,
                       evals: dict[str, Any] | None = None, checkpoint: str | None = None) -> None:
        """``progress.json``: what the operator mirrors into the resource's status."""
        if not self.dist.is_main:
            return
        from scoreops import storage

        last = last or {}
        trained = (evals or {}).get("trained")
        doc = {
            "phase": phase,
            "stage": stage,
            "step": step,
            "total_steps": self.run.spec.algorithm.total_steps(),
            "reward_t1": last.get("reward_t1"),
            "reward_t2": last.get("reward_t2"),
            "acc_t1": trained.metrics.acc_t1 if trained else None,
            "acc_t2": trained.metrics.acc_t2 if trained else None,
            "last_checkpoint": checkpoint or self.last_checkpoint,
            "results_uri": self.output,
            "updated": now_rfc3339(),
            "message": message,
            "versions": _versions(),
        }
        storage.write_json(self.uri("progress.json"), doc)

    def log_metrics(self, metrics: list[dict[str, Any]], m: dict[str, Any], tb: Any) -> None:
        """Rewrite ``metrics.jsonl`` with ``metrics``; add step ``m``'s scalars to ``tb``."""
        if not self.dist.is_main:
            return
        from scoreops import storage

        storage.write_text(self.uri("metrics.jsonl"),
                           "".join(json.dumps(x) + "\n" for x in metrics))
        if tb is not None:
            for k, v in m.items():
                if isinstance(v, (int, float)) and k != "step":
                    tb.add_scalar(k, v, m["step"])
            tb.flush()

    def tensorboard(self) -> Any:
        """A TensorBoard writer on rank 0 (``None`` elsewhere, or without tensorboard)."""
        if not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        self._tb_dir = self._local_work_dir() / "tensorboard"
        return SummaryWriter(str(self._tb_dir))

    def _local_work_dir(self) -> Path:
        """The output itself when local, else a cache directory keyed by the output URI."""
        import hashlib

        from scoreops import storage

        if not storage.is_remote(self.output):
            return Path(storage.local_path(self.output))
        key = hashlib.sha256(self.output.encode()).hexdigest()[:12]
        d = Path.home() / ".cache" / "scoreops" / "work" / key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def upload_tensorboard(self) -> None:
        """Copy the TensorBoard events to ``<output>/tensorboard`` when the output is remote."""
        from scoreops import storage

        if self._tb_dir is None or not storage.is_remote(self.output):
            return
        for f in sorted(self._tb_dir.glob("*")):
            storage.upload_file(f, self.uri("tensorboard", f.name))
