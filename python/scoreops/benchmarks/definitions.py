"""The registered benchmarks, each a declaration: prompt, scoring, sources, expected size.

Prompts are chat turns. Few-shot examples become earlier user/assistant turns (the
multi-turn few-shot format), so the same prompt works for a base model behind a chat
template and for an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import re
import string
from typing import Any

from scoreops.benchmarks import offline
from scoreops.benchmarks.base import Benchmark, register
from scoreops.benchmarks.bbh import (
    BBH_TASK_SIZES,
    BBH_TASKS,
    bbh_extract_answer,
    bbh_match,
    generate_boolean_expressions,
)
from scoreops.rewards.equivalence import math_equal
from scoreops.rewards.extract import (
    extract_boxed,
    extract_choice,
    extract_final_answer,
    extract_flexible,
    extract_strict_gsm8k,
    lm_eval_normalize,
)
from scoreops.rewards.verifiers import gold_index

Item = dict[str, Any]
LETTERS = string.ascii_uppercase

# -- GSM8K -----------------------------------------------------------------------------------

GSM8K_INSTRUCTION = (
    "Solve the problem step by step. Then write the final answer on its own line "
    "in the form '#### <number>'."
)


def _gsm8k_user(item: Item) -> str:
    return f"{item['question']}\n\n{GSM8K_INSTRUCTION}"


def _gsm8k_assistant(item: Item) -> str:
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


def _gsm8k_raw(row: dict[str, Any], hint: str) -> Item:
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


def _math_user(item: Item) -> str:
    return f"{item['question']}\n\n{MATH_INSTRUCTION}"


def _math_assistant(item: Item) -> str:
    solution = str(item.get("solution") or "")
    return solution if "\\boxed" in solution else f"{solution}\n\nThe final answer is " \
        f"$\\boxed{{{item['answer']}}}$.".strip()


def score_math(text: str, item: Item) -> dict[str, float]:
    """The final answer (last ``\\boxed{}``, else "the answer is", else the last number)
    against the gold by mathematical equivalence (math-verify)."""
    pred = extract_final_answer(text)
    return {"correct": float(math_equal(pred, str(item["answer"])))}


def _math_subject(value: Any) -> str:
    s = str(value).lower().replace("&", "and")
    return re.sub(r"[^a-z]+", "_", s).strip("_")


def _math_raw(row: dict[str, Any], hint: str) -> Item:
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


# -- multiple choice ---------------------------------------------------------------------------

MC_INSTRUCTION = "Answer with the letter of the correct option."


def _options(choices: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def _mc_assistant(item: Item) -> str:
    return f"The answer is {LETTERS[int(item['answer'])]}."


def score_choice(text: str, item: Item) -> dict[str, float]:
    """The option the completion names (letter or option text) against the gold index;
    ``answered`` says whether any option could be read at all."""
    picked = extract_choice(text, item["choices"])
    return {"correct": float(picked == int(item["answer"])), "answered": float(picked is not None)}


def _subject_words(subject: str) -> str:
    return subject.replace("_", " ")


def _mmlu_user(item: Item) -> str:
    head = f"The following is a multiple choice question about {_subject_words(item['subject'])}."
    return f"{head}\n\n{item['question']}\n\n{_options(item['choices'])}\n\n{MC_INSTRUCTION}"


def _mmlu_ll_context(item: Item) -> str:
    letters = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
    return f"{item['question'].strip()}\n{letters}\nAnswer:"


def _mmlu_ll_choices(item: Item) -> list[str]:
    return list(LETTERS[: len(item["choices"])])


def _mmlu_ll_description(item: Item) -> str:
    return ("The following are multiple choice questions (with answers) about "
            f"{_subject_words(item['subject'])}.\n\n")


def _mmlu_raw(row: dict[str, Any], hint: str) -> Item:
    choices = [str(c) for c in row["choices"]]
    subject = row.get("subject") or hint
    item: Item = {"question": str(row["question"]).strip(), "choices": choices,
                  "answer": gold_index(row["answer"], len(choices)), "subject": str(subject)}
    if row.get("id") is not None:
        item["id"] = str(row["id"])
    return item


def _arc_user(item: Item) -> str:
    return f"{item['question']}\n\n{_options(item['choices'])}\n\n{MC_INSTRUCTION}"


def _arc_ll_context(item: Item) -> str:
    return f"Question: {item['question']}\nAnswer:"


def _choice_texts(item: Item) -> list[str]:
    return list(item["choices"])


def _arc_raw(row: dict[str, Any], hint: str) -> Item:
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


def _hellaswag_user(item: Item) -> str:
    return (f"Which ending completes the text best?\n\n{item['question']} ...\n\n"
            f"{_options(item['choices'])}\n\n{MC_INSTRUCTION}")


def _hellaswag_ll_context(item: Item) -> str:
    return str(item["question"])


def _hellaswag_raw(row: dict[str, Any], hint: str) -> Item:
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


# -- BBH -------------------------------------------------------------------------------------

BBH_INSTRUCTION = "Think step by step, then finish with \"So the answer is <answer>.\""


def _bbh_user(item: Item) -> str:
    return f"{item['question']}\n\n{BBH_INSTRUCTION}"


def _bbh_assistant(item: Item) -> str:
    return str(item.get("solution") or f"So the answer is {item['answer']}.")


def score_bbh(text: str, item: Item) -> dict[str, float]:
    """What follows the last "the answer is" against the target (exact match after
    normalisation; an option target ``(B)`` also accepts ``B``)."""
    return {"correct": float(bbh_match(bbh_extract_answer(text), str(item["answer"])))}


def _bbh_raw(row: dict[str, Any], hint: str) -> Item:
    task = str(row.get("task") or hint)
    if task not in BBH_TASK_SIZES:
        raise ValueError(f"unknown BBH task {task!r}")
    item: Item = {"task": task, "question": str(row.get("input", row.get("question"))),
                  "answer": str(row.get("target", row.get("answer"))).strip()}
    if row.get("id") is not None:
        item["id"] = str(row["id"])
    return item


def _bbh_boolean_raw(row: dict[str, Any], hint: str) -> Item:
    default = hint if hint in BBH_TASK_SIZES else "boolean_expressions"
    item = _bbh_raw({**row, "task": row.get("task") or default}, hint)
    if item["task"] != "boolean_expressions":
        raise ValueError(f"not a boolean_expressions item ({item['task']})")
    return item


def _generate_boolean(size: int, seed: int) -> list[Item]:
    return [{"id": f"bbh_boolean_expressions-{seed}-{i}", "task": "boolean_expressions", **row}
            for i, row in enumerate(generate_boolean_expressions(size, seed=seed))]


# -- the demo task ---------------------------------------------------------------------------


def _generate_addition(size: int, seed: int) -> list[Item]:
    from scoreops.data.generators import generate_items

    return [{"id": it.id, "question": it.question, "answer": it.answer}
            for it in generate_items("single-digit-addition", size, seed)]


def _plain_user(item: Item) -> str:
    return str(item["question"])


def _plain_assistant(item: Item) -> str:
    return str(item["answer"])


def score_number(text: str, item: Item) -> dict[str, float]:
    """The final answer (or last number) equals the gold number."""
    return {"correct": float(math_equal(extract_final_answer(text), str(item["answer"])))}


def _addition_raw(row: dict[str, Any], hint: str) -> Item:
    return {"question": str(row["question"]), "answer": str(row["answer"]),
            **({"id": str(row["id"])} if row.get("id") is not None else {})}


# -- registry --------------------------------------------------------------------------------

register(Benchmark(
    name="gsm8k",
    description="GSM8K grade-school math, test split (1,319); strict and flexible match",
    kind="generative-math",
    expected_size=1319,
    render_user=_gsm8k_user,
    render_assistant=_gsm8k_assistant,
    scorer=score_gsm8k,
    verifier="gsm8k-flexible",
    offline_source=offline.gsm8k,
    from_raw=_gsm8k_raw,
))

register(Benchmark(
    name="math500",
    description="MATH-500 competition math subset (500); math-verify equivalence",
    kind="generative-math",
    expected_size=500,
    render_user=_math_user,
    render_assistant=_math_assistant,
    scorer=score_math,
    verifier="math",
    offline_source=offline.math500,
    from_raw=_math_raw,
))

register(Benchmark(
    name="math",
    description="MATH competition math, full test split (5,000; 7 subjects)",
    kind="generative-math",
    expected_size=5000,
    render_user=_math_user,
    render_assistant=_math_assistant,
    scorer=score_math,
    verifier="math",
    subjects=offline.MATH_SUBJECTS,
    offline_source=offline.math_full,
    from_raw=_math_raw,
))

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

register(Benchmark(
    name="mmlu",
    description="MMLU, 57 subjects, test split (14,042); 5-shot from dev",
    kind="multiple-choice",
    expected_size=14042,
    render_user=_mmlu_user,
    render_assistant=_mc_assistant,
    scorer=score_choice,
    verifier="choice",
    subjects=MMLU_SUBJECTS,
    offline_source=offline.mmlu,
    from_raw=_mmlu_raw,
    fewshot_splits=("dev",),
    ll_context=_mmlu_ll_context,
    ll_choices=_mmlu_ll_choices,
    ll_description=_mmlu_ll_description,
))

register(Benchmark(
    name="arc_challenge",
    description="ARC-Challenge science questions, test split (1,172)",
    kind="multiple-choice",
    expected_size=1172,
    render_user=_arc_user,
    render_assistant=_mc_assistant,
    scorer=score_choice,
    verifier="choice",
    offline_source=offline.arc_challenge,
    from_raw=_arc_raw,
    fewshot_splits=("train",),
    ll_context=_arc_ll_context,
    ll_choices=_choice_texts,
))

register(Benchmark(
    name="hellaswag",
    description="HellaSwag commonsense completion, validation split (10,042)",
    kind="multiple-choice",
    expected_size=10042,
    render_user=_hellaswag_user,
    render_assistant=_mc_assistant,
    scorer=score_choice,
    verifier="choice",
    offline_source=offline.hellaswag,
    from_raw=_hellaswag_raw,
    test_splits=("validation", "val"),
    fewshot_splits=("train",),
    ll_context=_hellaswag_ll_context,
    ll_choices=_choice_texts,
))

register(Benchmark(
    name="bbh",
    description="BIG-Bench Hard, 27 tasks (6,511); imported from the BBH JSON files",
    kind="generative-text",
    expected_size=sum(BBH_TASK_SIZES.values()),
    render_user=_bbh_user,
    render_assistant=_bbh_assistant,
    scorer=score_bbh,
    verifier="exact",
    subjects=BBH_TASKS,
    subject_field="task",
    subject_sizes=dict(BBH_TASK_SIZES),
    from_raw=_bbh_raw,
    fewshot_splits=("cot", "fewshot"),
))

register(Benchmark(
    name="bbh_boolean_expressions",
    description="BBH boolean_expressions (250): BBH files, or generated from its grammar",
    kind="generative-text",
    expected_size=BBH_TASK_SIZES["boolean_expressions"],
    render_user=_bbh_user,
    render_assistant=_bbh_assistant,
    scorer=score_bbh,
    verifier="exact",
    subject_field="task",
    from_raw=_bbh_boolean_raw,
    fewshot_splits=("cot", "fewshot"),
    generator=_generate_boolean,
    generator_size=BBH_TASK_SIZES["boolean_expressions"],
    # generated with a seed the test set (seed 0) does not use
    builtin_fewshot=tuple(
        {**row, "id": f"bbh_boolean_expressions-fewshot-{i}"}
        for i, row in enumerate(generate_boolean_expressions(3, seed=1_000_003))
    ),
))

register(Benchmark(
    name="single-digit-addition",
    description="a + b with one-digit operands (generated; the CPU demo task)",
    kind="generative-math",
    expected_size=None,
    render_user=_plain_user,
    render_assistant=_plain_assistant,
    scorer=score_number,
    verifier="math",
    from_raw=_addition_raw,
    generator=_generate_addition,
    generator_size=100,
    builtin_fewshot=tuple(
        {"id": f"single-digit-addition-fewshot-{i}", "question": q, "answer": a}
        for i, (q, a) in enumerate([
            ("What is 2 + 3? Answer with only the number.", "5"),
            ("What is 7 + 6? Answer with only the number.", "13"),
            ("What is 0 + 4? Answer with only the number.", "4"),
        ])
    ),
))
