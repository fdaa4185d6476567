"""EvalSuite -> ConfigMap + PyTorchJob or batch Job (create, resume, refused updates)."""

from __future__ import annotations

from typing import Any

import kopf

from handlers import common


async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    common.finish(await memo.reconciler.reconcile(body), body, logger)


async def spec_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    common.finish(await memo.reconciler.spec_changed(body), body, logger)

