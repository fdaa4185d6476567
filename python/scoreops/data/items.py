"""The unit of training data: one prompt with its reference answer."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Item", "json_safe", "normalize_question"]


@dataclass
class Item:
    """One training or held-out prompt.

    ``source`` says where it came from (``reasoning-gym:chain_sum``,
    ``builtin:single-digit-addition``, or the file's URI); ``meta`` holds JSON-serialisable
    extras that verifiers may need (reasoning-gym's ``task`` and ``entry_metadata``,
    multiple-choice ``choices``, a worked ``rationale``).
    """

    id: str
    question: str
    answer: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(
            id=str(d["id"]),
            question=str(d["question"]),
            answer=str(d["answer"]),
            source=str(d.get("source", "")),
            meta=dict(d.get("meta") or {}),
        )


def json_safe(value: Any) -> Any:
    """``value`` with tuples as lists, non-string keys as strings and other objects as
    ``str()``: what survives a JSON round trip unchanged."""
    return json.loads(json.dumps(value, default=str))


def normalize_question(text: str) -> str:
    """Key for de-duplication: NFKC, lower case, whitespace collapsed, edge punctuation off."""
    s = unicodedata.normalize("NFKC", text).lower()
    s = re.sub(r"\s+", " ", s).strip()
    return s.strip(" .?!:;")
