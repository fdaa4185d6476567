"""Finding the checkout whose hack/ scripts start the real test servers."""

from __future__ import annotations

import os
from pathlib import Path


def find_repo(script: str, error: type[Exception]) -> Path:
    """The scoreops checkout holding ``hack/<script>``.

    ``$SCOREOPS_REPO`` wins; otherwise the checkout this module lives in (tests/testkit).
    Raises ``error`` naming where it looked.
    """
    env = os.environ.get("SCOREOPS_REPO")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2])
    for root in candidates:
        if (root / "hack" / script).is_file():
            return root
    raise error(
        f"cannot find the scoreops repository (hack/{script}); set SCOREOPS_REPO to the "
        f"checkout (looked in: {', '.join(str(c) for c in candidates)})"
    )


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, for error messages."""
    return "\n".join(text.rstrip().splitlines()[-lines:])
