"""Training data: generators, file loading with malformed rows, leak-free splits."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import pytest

from scoreops.data import (
    Item,
    generate_items,
    load_items,
    normalize_question,
    read_items,
    save_items,
    split_train_eval,
)

# -- generators -------------------------------------------------------------------------------


def test_single_digit_addition_is_correct_and_deterministic():
    items = generate_items("single-digit-addition", 200, seed=7)
    assert len(items) == 200
    for item in items:
        m = re.fullmatch(r"What is (\d) \+ (\d)\? Answer with only the number\.", item.question)
        assert m, item.question
        assert item.answer == str(int(m.group(1)) + int(m.group(2)))
        assert item.source == "builtin:single-digit-addition"
    assert items == generate_items("single-digit-addition", 200, seed=7)
    assert items != generate_items("single-digit-addition", 200, seed=8)
    operands = {it.meta["a"] for it in items} | {it.meta["b"] for it in items}
    assert operands == set(range(10))
    assert len({it.id for it in items}) == 200


def test_reasoning_gym_items_are_json_safe_and_seeded():
    items = generate_items("chain_sum", 5, seed=11)
    again = generate_items("chain_sum", 5, seed=11)
    assert [it.to_dict() for it in items] == [it.to_dict() for it in again]
    for item in items:
        assert item.source == "reasoning-gym:chain_sum"
        assert item.meta["task"] == "chain_sum"
        # a JSON round trip changes nothing (tuples in reasoning-gym metadata became lists)
        assert json.loads(json.dumps(item.to_dict())) == item.to_dict()
        expression = item.meta["entry_metadata"]["expression"]
        assert str(eval(expression)) == item.answer  # chain_sum answers are the sum


def test_reasoning_gym_config_is_passed_through():
    items = generate_items("basic_arithmetic", 20, seed=0, config={"min_terms": 2, "max_terms": 2,
                                                                    "min_digits": 1, "max_digits": 1})
    for item in items:
        assert item.meta["entry_metadata"]["num_terms"] == 2


def test_unknown_task_lists_known_ones_and_suggests():
    with pytest.raises(ValueError) as err:
        generate_items("chain_sums", 3, seed=0)
    msg = str(err.value)
    assert "chain_sum" in msg and "single-digit-addition" in msg and "Did you mean" in msg


def test_builtin_rejects_unknown_config():
    with pytest.raises(ValueError, match="unknown config"):
        generate_items("single-digit-addition", 3, seed=0, config={"digits": 2})


# -- loading ----------------------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_malformed_rows_are_skipped_counted_and_reported(tmp_path: Path, caplog):
    uri = _write(tmp_path / "train.jsonl", [
        json.dumps({"question": "1+1?", "answer": "2"}),
        "{not json",
        json.dumps({"question": "no answer here"}),
        json.dumps(["a", "list"]),
        json.dumps({"question": "   ", "answer": "1"}),
        json.dumps({"id": "x", "question": "2+2?", "answer": 4}),
        json.dumps({"id": "x", "question": "dup id", "answer": 1}),
        "",
        json.dumps({"problem": "3+3?", "answer": "6", "level": 1}),
    ])
    with caplog.at_level(logging.WARNING, logger="scoreops.data"):
        report = read_items(uri)
    assert [it.question for it in report.items] == ["1+1?", "2+2?", "3+3?"]
    assert report.items[1].answer == "4" and report.items[1].id == "x"
    assert report.items[0].id == "train-0"
    assert report.items[2].meta == {"level": 1}
    assert report.skipped == 5 and report.rows == 8
    assert report.reasons[0].startswith("line 2: invalid JSON")
    assert any(r.startswith("line 3: no answer") for r in report.reasons)
    assert any("duplicate id 'x'" in r for r in report.reasons)
    assert "5 malformed rows skipped" in caplog.text
    assert len(load_items(uri)) == 3


def test_gsm8k_and_math_style_answers_are_reduced(tmp_path: Path):
    uri = _write(tmp_path / "mixed.jsonl", [
        json.dumps({"question": "eggs?", "answer": "16 - 3 = 13.\n#### 13"}),
        json.dumps({"problem": "half?", "solution": r"It is $\boxed{\frac{1}{2}}$."}),
    ])
    gsm, math = load_items(uri)
    assert gsm.answer == "13" and gsm.meta["rationale"].endswith("#### 13")
    assert math.answer == r"\frac{1}{2}" and "solution" in math.meta


@pytest.mark.parametrize("name", ["items.jsonl", "items.jsonl.gz", "items.parquet"])
def test_save_and_load_round_trip(tmp_path: Path, name: str):
    items = generate_items("basic_arithmetic", 4, seed=1) + generate_items(
        "single-digit-addition", 3, seed=2)
    uri = str(tmp_path / "sub" / name)
    save_items(items, uri)
    if name.endswith(".gz"):
        assert gzip.decompress(Path(uri).read_bytes()).startswith(b"{")
    assert load_items(uri) == items


def test_parquet_with_plain_columns(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"question": ["a?", None, "c?"], "answer": ["1", "2", None]}), path)
    report = read_items(str(path))
    assert [it.question for it in report.items] == ["a?"]
    assert report.skipped == 2


def test_missing_file_says_where_it_looked_and_how_to_import(tmp_path: Path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as err:
        load_items(str(missing))
    assert str(missing) in str(err.value)
    assert "scoreops data import" in str(err.value)


def test_unknown_extension_is_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match=r"\.jsonl"):
        load_items(str(tmp_path / "data.csv"))


def test_store_uri_goes_through_the_embedded_store(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SCOREOPS_STORE", str(tmp_path / "store"))
    items = generate_items("single-digit-addition", 5, seed=0)
    save_items(items, "store://data/demo/train.jsonl")
    assert (tmp_path / "store" / "data" / "demo" / "train.jsonl").is_file()
    assert load_items("store://data/demo/train.jsonl") == items
    with pytest.raises(FileNotFoundError, match=r"store://data/demo/missing\.jsonl"):
        load_items("store://data/demo/missing.jsonl")


# -- splits -----------------------------------------------------------------------------------


def _item(i: int, question: str) -> Item:
    return Item(id=str(i), question=question, answer="0", source="test")


def test_split_never_shares_a_question_between_train_and_eval():
    base = [f"What is {i} + {i}?" for i in range(40)]
    # the same questions again with other case/whitespace/trailing punctuation
    variants = [f"  what is {i}  +  {i}" for i in range(40)]
    items = [_item(i, q) for i, q in enumerate(base + variants)]
    for seed in range(5):
        train, evals = split_train_eval(items, 10, seed=seed)
        assert len(evals) == 10 and len(train) == 30
        train_q = {normalize_question(it.question) for it in train}
        eval_q = {normalize_question(it.question) for it in evals}
        assert not train_q & eval_q
        assert len(train_q) == 30 and len(eval_q) == 10


def test_split_fraction_seed_and_limits():
    items = generate_items("chain_sum", 50, seed=0)
    train, evals = split_train_eval(items, 0.2, seed=1)
    assert len(evals) == round(0.2 * (len(train) + len(evals)))
    assert split_train_eval(items, 0.2, seed=1) == (train, evals)
    assert split_train_eval(items, 0.2, seed=2) != (train, evals)
    assert split_train_eval(items, 0, seed=0)[1] == []
    with pytest.raises(ValueError, match="no training items"):
        split_train_eval(items[:3], 3, seed=0)
    with pytest.raises(ValueError):
        split_train_eval(items, 1.5, seed=0)


def test_single_digit_addition_split_dedupes_repeats():
    items = generate_items("single-digit-addition", 300, seed=0)  # only 100 distinct pairs
    train, evals = split_train_eval(items, 20, seed=0)
    assert len(train) + len(evals) == len({it.question for it in items}) <= 100
