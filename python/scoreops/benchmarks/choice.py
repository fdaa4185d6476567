"""Multiple-choice benchmarks' prompts, scorers, answer extractor, log-likelihood
renderings and raw-row readers: MMLU, ARC-Challenge, HellaSwag.

The declarations that use them are in :mod:`scoreops.benchmarks.definitions`.
"""

from __future__ import annotations

import string
from typing import Any

from scoreops.benchmarks import offline
from scoreops.rewards.extract import extract_choice
from scoreops.rewards.verifiers import gold_index

Item = dict[str, Any]
LETTERS = string.ascii_uppercase

MC_INSTRUCTION = "Answer with the letter of the correct option."

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)


def _options(choices: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def mc_assistant(item: Item) -> str:
    return f"The answer is {LETTERS[int(item['answer'])]}."


def score_choice(text: str, item: Item) -> dict[str, float]:
    """The option the completion names (letter or option text) against the gold index;
    ``answered`` says whether any option could be read at all."""
    picked = extract_choice(text, item["choices"])
    return {"correct": float(picked == int(item["answer"])), "answered": float(picked is not None)}


def extract_letter(text: str, item: Item) -> str | None:
    """The letter of the option the completion names (letter or option text), if any."""
    idx = extract_choice(text, list(item.get("choices") or []))
    return LETTERS[idx] if idx is not None else None


def _subject_words(subject: str) -> str:
    return subject.replace("_", " ")


# -- MMLU ------------------------------------------------------------------------------------


def mmlu_user(item: Item) -> str:
    head = f"The following is a multiple choice question about {_subject_words(item['subject'])}."
    return f"{head}\n\n{item['question']}\n\n{_options(item['choices'])}\n\n{MC_INSTRUCTION}"


def mmlu_ll_context(item: Item) -> str:
    letters = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
    return f"{item['question'].strip()}\n{letters}\nAnswer:"


def mmlu_ll_choices(item: Item) -> list[str]:
    return list(LETTERS[: len(item["choices"])])


def mmlu_ll_description(item: Item) -> str:
    return ("The following are multiple choice questions (with answers) about "
            f"{_subject_words(item['subject'])}.\n\n")


def mmlu_raw(row: dict[str, Any], hint: str) -> Item:
    choices = [str(c) for c in row["choices"]]
    subject = row.get("subject") or hint
    item: Item = {"question": str(row["question"]).strip(), "choices": choices,
                  "answer": gold_index(row["answer"], len(choices)), "subject": str(subject)}
    if row.get("id") is not None:
        item["id"] = str(row["id"])
    return item


# -- ARC -------------------------------------------------------------------------------------


def arc_user(item: Item) -> str:
    return f"{item['question']}\n\n{_options(item['choices'])}\n\n{MC_INSTRUCTION}"


def arc_ll_context(item: Item) -> str:
    return f"Question: {item['question']}\nAnswer:"


def choice_texts(item: Item) -> list[str]:
    return list(item["choices"])


def arc_raw(row: dict[str, Any], hint: str) -> Item:
    choices = row["choices"]
    if isinstance(choices, dict):  # HF ai2_arc: {"text": [...], "label": [...]}
        texts, labels = list(choices["text"]), [str(x) for x in choices["label"]]
        key = str(row["answerKey"]).strip()
        if key not in labels:
            raise ValueError(f"answerKey {key!r} not among labels {labels}")
        answer = labels.index(key)
    else:
        texts = list(choices)
        answer = gold_index(row["answer"], len(texts))
    item: Item = {"question": str(row["question"]).strip(), "choices": [str(t) for t in texts],
                  "answer": answer}
    if row.get("id") is not None:
        item["id"] = str(row["id"])
    return item


# -- HellaSwag -------------------------------------------------------------------------------


def hellaswag_user(item: Item) -> str:
    return (f"Which ending completes the text best?\n\n{item['question']} ...\n\n"
            f"{_options(item['choices'])}\n\n{MC_INSTRUCTION}")


def hellaswag_ll_context(item: Item) -> str:
    return str(item["question"])


def hellaswag_raw(row: dict[str, Any], hint: str) -> Item:
    if "ctx_a" in row:
        if row.get("label") in (None, ""):
            raise ValueError("no label (the HellaSwag test split is unlabelled)")
        item = offline.hellaswag_row(row, str(row.get("id") or ""))
        if not item["id"]:
            del item["id"]
        return item
    choices = [str(c) for c in row["choices"]]
    item = {"question": str(row["question"]), "choices": choices,
            "answer": gold_index(row["answer"], len(choices))}
    if row.get("id") is not None:
        item["id"] = str(row["id"])
    return item
