"""The guided strategy in an EvalSuite, with each critic (the reward-model critic with a tiny
process reward model saved here): the records keep the search tree, the metrics and the
report carry the search figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scoreops.evaluate import main

pytestmark = [pytest.mark.integration]

GSM8K = [
    {"id": f"g{i}", "question": q, "answer": a}
    for i, (q, a) in enumerate([("What is 2 + 3?", "5"), ("What is 10 - 4?", "6"),
                                ("What is 3 * 3?", "9")])
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_prm(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A process reward model by URI: the tiny model's body with a one-logit score head."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-prm")
    config = AutoConfig.from_pretrained(tiny)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)
    return out


def _run(tiny: Path, tmp_path: Path, strategy: dict[str, Any]) -> tuple[dict, list, str]:
    data, out = tmp_path / "data", tmp_path / "out"
    folder = data / "benchmarks" / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text("".join(json.dumps(it) + "\n" for it in GSM8K))
    suite = {
        "apiVersion": "scoreops.io/v1alpha1", "kind": "EvalSuite",
        "metadata": {"name": "guided-suite"},
        "spec": {
            "models": [{"name": "tiny", "uri": str(tiny)}],
            "benchmarks": [{"name": "gsm8k"}],
            "strategy": strategy,
            "generation": {"maxNewTokens": 12, "temperature": 0.8, "batchSize": 4},
            "dataRoot": str(data), "output": {"uri": str(out)}, "seed": 1,
        },
    }
    spec_file = tmp_path / "suite.json"
    spec_file.write_text(json.dumps(suite))
    assert main(["--spec", str(spec_file)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in
               (out / "records" / "tiny" / "gsm8k.jsonl").read_text().splitlines()]
    return summary["models"]["tiny"]["gsm8k"], records, (out / "report.md").read_text()


SEARCH = {"name": "guided", "beam": 2, "expand": 2, "maxSteps": 3, "stepDelimiter": " "}


@pytest.mark.parametrize("critic", ["tool", "self-eval", "reward-model"])
def test_guided_runs_in_an_evalsuite_with_each_critic(critic: str, tiny: Path,
                                                      tiny_prm: Path, tmp_path: Path) -> None:
    strategy = SEARCH | {"critic": critic}
    if critic == "reward-model":
        strategy["rewardModel"] = str(tiny_prm)
    metrics, records, report = _run(tiny, tmp_path, strategy)
    assert metrics["n"] == len(records) == len(GSM8K)
    for rec in records:
        search = rec["search"]
        assert search["critic"] == critic
        chosen = "".join(search["nodes"][n]["text"] for n in search["chosen"])
        assert rec["final"]["output"] == chosen
        first = [n for n in search["nodes"] if n["d"] == 1]
        assert len(first) == 2 * 2  # beam x expand from the prompt
        assert search["pruned"] == sum(not n["kept"] for n in search["nodes"])
        assert all(0.0 <= n["score"] <= 1.0 for n in search["nodes"])
    figures = metrics["search"]
    assert figures["items"] == len(GSM8K)
    assert figures["mean_steps"] == pytest.approx(
        sum(r["search"]["steps"] for r in records) / len(records))
    assert figures["tokens_per_item"] == pytest.approx(
        sum(r["completion_tokens"] for r in records) / len(records))
    assert 0.0 <= figures["override_rate"] <= 1.0
    assert "guided decoding, beam 2 × expand 2" in report
    assert "guided search:" in report and "steps per answer" in report
