"""Math benchmarks' prompts, scorers, answer extractors and raw-row readers: GSM8K, MATH
(and MATH-500), and the generated single-digit addition demo task.

The declarations that use them are in :mod:`scoreops.benchmarks.definitions`.
"""

from __future__ import annotations

import re
from typing import Any

from scoreops.benchmarks import offline
from scoreops.rewards.equivalence import math_equal
from scoreops.rewards.extract import (
    extract_boxed,
    extract_final_answer,
    extract_flexible,
    extract_strict_gsm8k,
    lm_eval_normalize,
)

Item = dict[str, Any]

# -- GSM8K -----------------------------------------------------------------------------------

GSM8K_INSTRUCTION = (
    "Solve the problem step by step. Then write the final answer on its own line "
    "in the form '#### <number>'."
)

#: GSM8K's side metrics (lm-eval's two filters) and the caption of each in the report
GSM8K_SIDE_METRICS = {
    "strict": "GSM8K strict-match (the number after `####`), as lm-evaluation-harness "
              "reports it",
    "flexible": "GSM8K flexible-extract (the last number), as lm-evaluation-harness "
                "reports it",
}


def gsm8k_user(item: Item) -> str:
    return f"{item['question']}\n\n{GSM8K_INSTRUCTION}"


def gsm8k_assistant(item: Item) -> str:
    return str(item.get("solution") or f"#### {item['answer']}")


def score_gsm8k(text: str, item: Item) -> dict[str, float]:
    """lm-eval's two GSM8K metrics on one completion.

    ``strict``: the number after ``#### ``; ``flexible``: the last number in the text; both
    exact-matched after lm-eval's normalisation (commas, ``$``, a trailing period dropped).
    ``correct`` is ``flexible``: chat models often answer right without the ``####`` marker
    (the two metrics can differ by 50+ points), and a self-correction metric should count
    the answer, not the format. ``strict`` is reported next to it for lm-eval parity.
    """
    gold = lm_eval_normalize(str(item["answer"]))
    strict_pred = extract_strict_gsm8k(text)
    flexible_pred = extract_flexible(text)
    strict = float(strict_pred is not None and lm_eval_normalize(strict_pred) == gold)
    flexible = float(flexible_pred is not None and lm_eval_normalize(flexible_pred) == gold)
    return {"strict": strict, "flexible": flexible, "correct": flexible}


def extract_gsm8k(text: str, item: Item) -> str | None:
    """The flexible (last-number) answer, normalised as ``correct`` compares it."""
    found = extract_flexible(text)
    return lm_eval_normalize(found) if found is not None else None


def gsm8k_raw(row: dict[str, Any], hint: str) -> Item:
    answer = str(row["answer"]).strip()
    solution = row.get("solution")
    if "####" in answer:
        solution = answer
        answer = answer.rsplit("####", 1)[1].strip()
    item: Item = {"question": str(row["question"]), "answer": answer.replace(",", "")}
    if solution:
        item["solution"] = str(solution)
    if row.get("id") is not None:
        item["id"] = str(row["id"])
    return item


# -- MATH ------------------------------------------------------------------------------------

MATH_INSTRUCTION = "Solve the problem step by step. Put the final answer in \\boxed{}."


def math_user(item: Item) -> str:
    return f"{item['question']}\n\n{MATH_INSTRUCTION}"


def math_assistant(item: Item) -> str:
    solution = str(item.get("solution") or "")
    return solution if "\\boxed" in solution else f"{solution}\n\nThe final answer is " \
        f"$\\boxed{{{item['answer']}}}$.".strip()


def score_math(text: str, item: Item) -> dict[str, float]:
    """The final answer (last ``\\boxed{}``, else "the answer is", else the last number)
    against the gold by mathematical equivalence (math-verify)."""
    pred = extract_final_answer(text)
    return {"correct": float(math_equal(pred, str(item["answer"])))}


def extract_math(text: str, item: Item) -> str | None:
    """The final answer, as :func:`score_math` and :func:`score_number` read it."""
    return extract_final_answer(text)


def _math_subject(value: Any) -> str:
    s = str(value).lower().replace("&", "and")
    return re.sub(r"[^a-z]+", "_", s).strip("_")


def math_raw(row: dict[str, Any], hint: str) -> Item:
    question = row.get("question") or row.get("problem")
    if not question:
        raise ValueError("no problem/question")
    solution = row.get("solution")
    gold = extract_boxed(solution) if solution else None
    if gold is None:
        gold = row.get("answer")
    if gold is None or str(gold).strip() == "":
        raise ValueError("no \\boxed{} in solution and no answer")
    item: Item = {"question": str(question), "answer": str(gold).strip()}
    if solution:
        item["solution"] = str(solution)
    subject = row.get("subject") or row.get("type")
    if subject is None and _math_subject(hint) in offline.MATH_SUBJECTS:
        subject = hint
    if subject:
        item["subject"] = _math_subject(subject)
    if row.get("level") is not None:
        item["level"] = row["level"]
    for key in ("id", "unique_id"):
        if row.get(key) is not None:
            item["id"] = str(row[key])
            break
    return item


# -- the demo task ---------------------------------------------------------------------------


def generate_addition(size: int, seed: int) -> list[Item]:
    from scoreops.data.generators import generate_items

    return [{"id": it.id, "question": it.question, "answer": it.answer}
            for it in generate_items("single-digit-addition", size, seed)]


def plain_user(item: Item) -> str:
    return str(item["question"])


def plain_assistant(item: Item) -> str:
    return str(item["answer"])


def score_number(text: str, item: Item) -> dict[str, float]:
    """The final answer (or last number) equals the gold number."""
    return {"correct": float(math_equal(extract_final_answer(text), str(item["answer"])))}


def addition_raw(row: dict[str, Any], hint: str) -> Item:
    return {"question": str(row["question"]), "answer": str(row["answer"]),
            **({"id": str(row["id"])} if row.get("id") is not None else {})}
