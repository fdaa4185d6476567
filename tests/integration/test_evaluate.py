"""An EvalSuite end to end on the tiny random model: generative self-correction on a GSM8K
fixture, log-likelihood on an ARC fixture; files, records and metrics agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scoreops.api import parse_resource
from scoreops.evaluate import loglikelihoods, main, run_evalsuite
from scoreops.evaluate.loglik import _encode_pair

GSM8K = [
    {"id": f"g{i}", "question": f"Tom has {a} apples and buys {b} more. How many now?",
     "answer": str(a + b), "solution": f"{a} + {b} = {a + b}\n#### {a + b}"}
    for i, (a, b) in enumerate([(3, 4), (10, 5), (7, 8), (2, 2), (9, 1)])
]
ARC = [
    {"id": f"a{i}", "question": q, "choices": c, "answer": k}
    for i, (q, c, k) in enumerate([
        ("Which is a liquid at room temperature?", ["iron", "water", "salt", "sand"], 1),
        ("What do plants need for photosynthesis?", ["sunlight", "plastic", "noise"], 0),
        ("Which planet is closest to the Sun?", ["Mars", "Venus", "Mercury", "Earth"], 2),
    ])
]


def _write_benchmark(root: Path, name: str, items: list[dict[str, Any]]) -> None:
    folder = root / "benchmarks" / name
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def _suite(model: Path, data: Path, out: Path, benchmarks: list[dict[str, Any]],
           strategy: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "scoreops.io/v1alpha1", "kind": "EvalSuite",
        "metadata": {"name": "tiny-suite"},
        "spec": {
            "models": [{"name": "tiny", "uri": str(model)}],
            "benchmarks": benchmarks,
            "strategy": strategy or {"name": "self-correct", "turns": 2},
            "generation": {"maxNewTokens": 12, "temperature": 0.0, "batchSize": 4},
            "dataRoot": str(data),
            "output": {"uri": str(out)},
        },
    }


def test_evalsuite_end_to_end(tiny: Path, tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    _write_benchmark(data, "gsm8k", GSM8K)
    _write_benchmark(data, "arc_challenge", ARC)
    spec_file = tmp_path / "suite.json"
    spec_file.write_text(json.dumps(_suite(tiny, data, out, [
        {"name": "gsm8k"},
        {"name": "arc_challenge", "mode": "loglikelihood"},
    ])))
    assert main(["--spec", str(spec_file), "--limit", "4"]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["report"] == str(out / "report.md")
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "tiny" in report and "gsm8k" in report and "Acc@t1" in report

    g = summary["models"]["tiny"]["gsm8k"]
    records = [json.loads(line) for line in
               (out / "records" / "tiny" / "gsm8k.jsonl").read_text().splitlines()]
    assert g["n"] == len(records) == 4  # --limit
    assert g["delta"] == g["delta_i2c"] - g["delta_c2i"]
    for rec in records:
        assert [t["turn"] for t in rec["turns"]] == ["t1", "t2"]
        assert rec["prompt"][-1]["role"] == "user"
        assert {"strict", "flexible", "correct", "extracted", "output"} <= set(rec["turns"][0])
    # the summary is what the records say
    t1 = [r["turns"][0]["correct"] for r in records]
    t2 = [r["turns"][1]["correct"] for r in records]
    assert g["acc_t1"] == pytest.approx(sum(t1) / 4) and g["acc_t2"] == pytest.approx(sum(t2) / 4)
    assert g["counts"]["i2c"] == sum(1 for a, b in zip(t1, t2, strict=True) if not a and b)
    assert g["acc_t1_strict"] == pytest.approx(
        sum(r["turns"][0]["strict"] for r in records) / 4)
    assert "delta_flexible" in g and g["ci"]["acc_t1"][0] <= g["acc_t1"] <= g["ci"]["acc_t1"][1]
    # an unreadable answer scores wrong and shows as extracted: null
    for rec in records:
        for t in rec["turns"]:
            if t["extracted"] is None:
                assert t["correct"] is False

    a = summary["models"]["tiny"]["arc_challenge_ll"]
    assert a["mode"] == "loglikelihood" and a["n"] == 3
    ll_records = [json.loads(line) for line in
                  (out / "records" / "tiny" / "arc_challenge_ll.jsonl").read_text().splitlines()]
    for rec, item in zip(ll_records, ARC, strict=True):
        assert len(rec["loglikelihoods"]) == len(item["choices"])
        best = max(range(len(item["choices"])), key=lambda i: rec["loglikelihoods"][i])
        assert rec["acc"] == (best == item["answer"])
    assert a["acc"] == pytest.approx(sum(r["acc"] for r in ll_records) / 3)


LL_REQUESTS = [
    ("Question: What is 2+2?\nAnswer:", " 4"),
    ("Question: What is 2+2?\nAnswer:", " four, which is the sum of two and two"),
    ("Q: a much longer context with many more words in it than the others\nA:", " yes indeed"),
    ("Question: What is 2+2?\nAnswer:", " 5"),
    ("Short ", "tail"),  # trailing space moves into the continuation
    ("Q: a much longer context with many more words in it than the others\nA:", " no"),
    ("Short ", "er and shorter still"),
]


def _one_at_a_time(model: Any, tok: Any, ctx: str, cont: str) -> tuple[float, bool]:
    """log p(cont | ctx) from a plain forward pass over context + continuation alone."""
    import torch

    stripped = ctx.rstrip()
    cont = ctx[len(stripped):] + cont
    whole = tok(stripped + cont, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(stripped, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    span = range(n_ctx, len(whole))
    return (sum(float(lp[i - 1, whole[i]]) for i in span),
            all(int(lp[i - 1].argmax()) == whole[i] for i in span))


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_batched_loglikelihoods_equal_one_at_a_time(tiny: Path, batch_size: int) -> None:
    """Options sharing a context are packed into one row (tree mask, branch positions);
    the scores equal separate forward passes for every batch size."""
    from scoreops.models import load_model

    model, tok = load_model(str(tiny))
    batched = loglikelihoods(model, tok, LL_REQUESTS, batch_size=batch_size)
    for (ctx, cont), (ll, greedy) in zip(LL_REQUESTS, batched, strict=True):
        expected, expected_greedy = _one_at_a_time(model, tok, ctx, cont)
        assert ll == pytest.approx(expected, abs=1e-4)
        assert greedy == expected_greedy


def test_loglikelihoods_one_per_row_paths(tiny: Path) -> None:
    """Unpacked scoring (one request per row, as lm-evaluation-harness does) equals the
    packed one; a context too long to pack is truncated on the left."""
    from scoreops.models import load_model

    model, tok = load_model(str(tiny))
    packed = loglikelihoods(model, tok, LL_REQUESTS, batch_size=4)
    alone = loglikelihoods(model, tok, LL_REQUESTS, batch_size=4, pack=False)
    for (a, ga), (b, gb) in zip(packed, alone, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
        assert ga == gb
    # Requests longer than max_length + 1 tokens lose their first tokens; the rest do not.
    sizes = [sum(map(len, _encode_pair(tok, c, x))) for c, x in LL_REQUESTS]
    limit = sorted(sizes)[len(sizes) // 2]
    limited = loglikelihoods(model, tok, LL_REQUESTS, batch_size=4, max_length=limit)
    assert any(n > limit + 1 for n in sizes) and any(n <= limit + 1 for n in sizes)
    for k, ((a, _), (b, _)) in enumerate(zip(packed, limited, strict=True)):
        if sizes[k] > limit + 1:
            assert a != pytest.approx(b, abs=1e-4)
        else:
            assert a == pytest.approx(b, abs=1e-4)


def test_self_consistency_suite_and_bad_input(tiny: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    _write_benchmark(data, "gsm8k", [*GSM8K[:2], {"id": "broken", "question": "no answer"}])
    suite = parse_resource(_suite(tiny, data, out, [{"name": "gsm8k"}],
                                  {"name": "self-consistency", "samples": 3}))
    assert run_evalsuite(suite) == 0
    g = json.loads((out / "summary.json").read_text())["models"]["tiny"]["gsm8k"]
    assert g["n"] == 2 and g["skipped"] == 1  # the malformed row is counted, not fatal
    assert g["delta"] == g["delta_i2c"] - g["delta_c2i"]
    assert any("temperature" in note for note in g["notes"])
    rec = json.loads((out / "records" / "tiny" / "gsm8k.jsonl").read_text().splitlines()[0])
    assert len(rec["attempts"]) == 3

    missing = parse_resource(_suite(tiny, data, out, [{"name": "mmlu"}]))
    assert run_evalsuite(missing) == 2
    assert "scoreops data import mmlu" in capsys.readouterr().err
