"""The event handlers of every scoreops kind: create/resume, a spec update, the deletion of
a resource whose output is to be removed. Each is one call into the reconciler, which reads
what differs between kinds from their spec (``scoreops.k8s.kinds``); ``main.py`` registers
them for each kind.
"""

from __future__ import annotations

from typing import Any

import kopf

from handlers import common


async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Create or resume: make the children match the spec."""
    common.finish(await memo.reconciler.reconcile(body), body, logger)


async def spec_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """A new generation: refused once a job-backed kind's children exist, else reconciled."""
    common.finish(await memo.reconciler.spec_changed(body), body, logger)


async def delete_output(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Remove the resource's S3 output (opted into by annotation)."""
    outcome = await memo.reconciler.delete_output(body)
    logger.info(outcome.message)
