"""MGRPO, STaR and CORY through the real training loop on a tiny model with a learnable task.

The "digit model" is the tiny random Llama with an untied head rewired so that, whatever the
question, its next token is one of the ten digits with probability ~0.97, each about equally
likely; every question's answer is "7" and one token is generated. A first attempt is right
one time in ten, and the reward is learnable in a few steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops import storage  # noqa: E402
from scoreops.api import parse_resource  # noqa: E402
from scoreops.training.loop import Trainer  # noqa: E402
from testkit.digits import (  # noqa: E402
    build_digit_model,
    scorerun_doc,
    write_answer_items,
)

make_digit_model = build_digit_model
write_items = write_answer_items


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_digit_model(tmp_path_factory.mktemp("digit") / "model")


def spec_doc(model: Path, data: Path, output: Path, algorithm: dict[str, Any],
             **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": str(model)},
        "dataset": {"train": {"uri": str(data)}, "evalSize": 0, "seed": 0,
                    "verifier": "exact"},
        "algorithm": algorithm,
        "rollout": {"turns": 2, "samplesPerPrompt": 4, "maxNewTokens": 1, "temperature": 1.0},
        "optim": {"learningRate": 0.05, "batchSize": 4, "microBatchSize": 16,
                  "warmupRatio": 0.0, "schedule": "constant"},
        "resources": {"precision": "fp32"},
        "checkpoint": {"everySteps": 100, "keep": 1},
        "evaluation": {"enabled": False},
        "output": {"uri": str(output)},
        "seed": 0,
    }
    return scorerun_doc(spec, **over)


def final_weights(output: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    assert storage.is_complete(str(output / "final"))
    return load_file(str(output / "final" / "model.safetensors"))


def base_weights(model: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model / "model.safetensors"))


def p_answer(model_dir: Path, question: str, answer: str = "7") -> float:
    """Probability that the model's first token answering ``question`` is ``answer``."""
    from scoreops.models import load_model
    from scoreops.rollout import encode_conversation

    model, tok = load_model(str(model_dir))
    ids = encode_conversation(tok, [{"role": "user", "content": question}])
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)
    return float(probs[tok.convert_tokens_to_ids(answer)])


def assert_moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert set(after) <= set(before) | {"lm_head.weight"}, sorted(set(after) - set(before))
    moved = [k for k in after if k in before and not torch.equal(before[k], after[k])]
    assert moved, "no parameter changed"


def test_mgrpo_layer1_reward_rises_and_layer2_groups_are_reported(
    digit_model: Path, tmp_path: Path
) -> None:
    data = write_items(tmp_path / "train.jsonl", 40)
    out = tmp_path / "out"
    doc = spec_doc(digit_model, data, out,
                   {"name": "mgrpo", "mgrpo": {"steps": 12, "beta": 0.001, "variations": 2}},
                   **{"rollout.samplesPerPrompt": 8})
    result = Trainer(parse_resource(doc)).run_training()
    m = result.metrics
    assert len(m) == 12 and all(x["stage"] == "mgrpo" for x in m)
    for x in m:
        assert math.isfinite(x["loss"]) and math.isfinite(x["layer1_loss"])
        # a layer-2 group is a kept correction prompt: at most one per layer-1 answer (4 × 8)
        assert x["layer2_groups"] == int(x["layer2_groups"]) and 0 <= x["layer2_groups"] <= 32
        assert (x["layer2_groups"] > 0) == ("layer2_loss" in x)
    assert sum(x["layer2_groups"] for x in m) > 0
    r1 = [x["reward_t1"] for x in m]
    first, last = sum(r1[:3]) / 3, sum(r1[-3:]) / 3
    assert last > first + 0.2, f"layer-1 reward did not rise: {r1}"
    # the metrics file carries the per-step survivor count
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["layer2_groups"] for x in lines] == [x["layer2_groups"] for x in m]
    # and the saved model puts more mass on the right answer than the base did
    q = "What is 3 + 4?"
    assert p_answer(out / "final", q) > 2 * p_answer(digit_model, q)


@pytest.mark.parametrize("external", [True, False])
def test_star_fine_tunes_on_verified_answers(digit_model: Path, tmp_path: Path,
                                             external: bool) -> None:
    data = write_items(tmp_path / "train.jsonl", 40)
    out = tmp_path / "out"
    doc = spec_doc(digit_model, data, out,
                   {"name": "star", "star": {"rounds": 1, "stepsPerRound": 4,
                                             "externalCorrection": external}},
                   **{"rollout.samplesPerPrompt": 8})
    result = Trainer(parse_resource(doc)).run_training()
    m = result.metrics
    assert len(m) == 4 and all(x["stage"] == "round1" for x in m)
    assert all(math.isfinite(x["loss"]) for x in m)
    assert sum(x["kept"] for x in m) > 0
    assert ("reward_t2" in m[0]) == external
    if external:
        assert sum(x["kept_revisions"] for x in m) > 0
    else:
        assert all(x["kept_revisions"] == 0 for x in m)
    # every step samples from the round's starting model (the base): rewards stay at chance
    # level however the policy moves, while the fine-tuned policy learns the answer
    assert max(x["reward_t1"] for x in m) < 0.5
    assert_moved(base_weights(digit_model), final_weights(out))
    q = "What is 2 + 5?"
    assert p_answer(out / "final", q) > 1.3 * p_answer(digit_model, q)


def test_cory_trains_two_adapters_and_saves_a_plain_model(digit_model: Path,
                                                           tmp_path: Path) -> None:
    data = write_items(tmp_path / "train.jsonl", 40)
    out = tmp_path / "out"
    doc = spec_doc(digit_model, data, out,
                   {"name": "cory", "cory": {"steps": 6, "exchangeEvery": 2, "beta": 0.01,
                                             "loraRank": 4}},
                   **{"checkpoint.everySteps": 3, "optim.learningRate": 0.1})
    result = Trainer(parse_resource(doc)).run_training()
    m = result.metrics
    assert [x["stage"] for x in m] == ["pioneer-a", "pioneer-a", "pioneer-b", "pioneer-b",
                                       "pioneer-a", "pioneer-a"]
    assert all(math.isfinite(x["loss"]) and "cooperative_reward" in x for x in m)
    # the checkpoints hold both adapters; the base weights in them are untouched
    from safetensors.torch import load_file

    ckpt = load_file(str(out / "checkpoints" / "step-00000006" / "model.safetensors"))
    lora_b = {k: v for k, v in ckpt.items() if k.startswith("cory_adapters.B.")}
    assert any(k.endswith("__a") for k in lora_b) and any(k.endswith("__b") for k in lora_b)
    assert all(v.abs().max() > 0 for v in lora_b.values()), "an adapter never moved"
    base = base_weights(digit_model)
    for k, v in base.items():
        if "proj" not in k:
            assert torch.equal(ckpt[k], v), k
    # the final model is the base with the last pioneer merged in, loadable as plain Llama
    final = final_weights(out)
    assert not any(k.startswith("cory_adapters") for k in final)
    assert_moved(base, final)
    changed = {k for k in base if not torch.equal(base[k], final[k])}
    assert changed and all(k.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj", "o_proj")
                           for k in changed), changed
