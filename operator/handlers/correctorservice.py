"""CorrectorService -> InferenceService (create, resume, updates roll out through KServe)."""

from __future__ import annotations

from typing import Any

import kopf

from handlers import common


async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    common.finish(await memo.reconciler.reconcile(body), body, logger)

