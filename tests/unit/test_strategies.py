"""Strategies on a scripted engine whose outputs are known, and the OpenAI-compatible engine
against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from scoreops.api import StrategySpec
from scoreops.rollout import Completion, SamplingParams
from scoreops.strategies import (
    DIVERSE_TEMPERATURE,
    SELF_EVAL_PROMPT,
    aggregator_conversation,
    majority_vote,
    run_strategy,
)

Conv = list[dict[str, Any]]
Script = Callable[[Conv, SamplingParams, int], "str | tuple[str, list[float]]"]


class ScriptedEngine:
    """A RolloutEngine whose answer to each (conversation, sample) comes from a script; it
    records every call."""

    tokenizer = None

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[tuple[list[Conv], SamplingParams]] = []

    def generate(self, conversations: Sequence[Conv], params: SamplingParams, *,
                 prompt_token_ids: Any = None) -> list[list[Completion]]:
        self.calls.append(([list(c) for c in conversations], params))
        out = []
        for conv in conversations:
            row = []
            for j in range(params.n):
                got = self.script(conv, params, j)
                text, logprobs = got if isinstance(got, tuple) else (got, None)
                row.append(Completion(text=text, token_ids=list(range(len(text.split()))),
                                      logprobs=logprobs, finish_reason="stop"))
            out.append(row)
        return out

    def sync_weights(self, model: Any) -> None:
        pass

    def close(self) -> None:
        pass


def q(text: str) -> Conv:
    return [{"role": "user", "content": text}]


GREEDY = SamplingParams(max_new_tokens=32, temperature=0.0)


# --- majority vote / self-consistency ---------------------------------------------------------


def test_majority_vote_picks_majority_and_breaks_ties_by_first_seen() -> None:
    assert majority_vote(["3", "5", "5", "7", "5"]) == 1
    assert majority_vote(["4", "9", "9", "4"]) == 0
    assert majority_vote([None, "2", None, "2", "1"]) == 1
    assert majority_vote([None, None]) is None


def test_self_consistency_votes_over_extracted_answers_in_one_call() -> None:
    samples = {"q1": ["The answer is 3", "The answer is 5", "so 5", "The answer is 7", "5"],
               "q2": ["no idea", "answer: 8", "answer: 9", "answer: 9", "answer: 8"]}
    engine = ScriptedEngine(lambda conv, p, j: samples[conv[-1]["content"]][j])
    spec = StrategySpec(name="self-consistency", samples=5)
    results = run_strategy(engine, [q("q1"), q("q2")], spec, GREEDY)
    assert [r.final_answer for r in results] == ["5", "8"]
    assert results[0].final_text == "The answer is 5"  # the first sample with the winner
    assert [a.answer for a in results[1].attempts] == [None, "8", "9", "9", "8"]
    # one batched call, n=5, greedy replaced by the diverse temperature and said so
    assert len(engine.calls) == 1
    convs, params = engine.calls[0]
    assert len(convs) == 2 and params.n == 5 and params.temperature == DIVERSE_TEMPERATURE
    assert any("temperature" in note for note in results[0].notes)
    assert results[0].completion_tokens == sum(len(s.split()) for s in samples["q1"])


def test_self_consistency_keeps_a_nonzero_temperature() -> None:
    engine = ScriptedEngine(lambda conv, p, j: "1")
    run_strategy(engine, [q("x")], StrategySpec(name="self-consistency", samples=3),
                 SamplingParams(max_new_tokens=8, temperature=0.3))
    assert engine.calls[0][1].temperature == 0.3


# --- best-of-n -----------------------------------------------------------------------------


def _bon_script(conv: Conv, params: SamplingParams, j: int) -> str | tuple[str, list[float]]:
    if conv[-1]["content"] == SELF_EVAL_PROMPT:
        candidate = conv[-2]["content"]
        verdicts = {"answer A": ("Yes", [-0.9]), "answer B": ("No", [-2.0]),
                    "answer C": ("Yes.", [-0.1]), "answer D": ("maybe", [-0.01])}
        return verdicts[candidate]
    return ["answer A", "answer B", "answer C", "answer D"][j]


def test_best_of_n_picks_the_verifiers_choice() -> None:
    engine = ScriptedEngine(_bon_script)
    spec = StrategySpec(name="best-of-n", samples=4, verifier="self-eval")
    (result,) = run_strategy(engine, [q("pick")], spec, GREEDY, extract=lambda t: t[-1])
    # P(Yes) estimates: A exp(-0.9)=0.41, B 1-exp(-2)=0.86, C exp(-0.1)=0.90, D 0
    assert result.final_text == "answer C" and result.final_answer == "C"
    assert [round(a.score or 0, 2) for a in result.attempts] == [0.41, 0.86, 0.9, 0.0]
    # the verifier saw each candidate as the assistant's turn, greedily, in one call
    judge_convs, judge_params = engine.calls[1]
    assert [c[-2]["content"] for c in judge_convs] == [
        "answer A", "answer B", "answer C", "answer D"]
    assert judge_params.temperature == 0.0 and judge_params.n == 1
    assert len(engine.calls) == 2


def test_best_of_n_with_a_separate_verifier_engine_and_reward_fn() -> None:
    policy = ScriptedEngine(lambda conv, p, j: f"candidate {j}")
    judge = ScriptedEngine(
        lambda conv, p, j: "Yes" if conv[-2]["content"] == "candidate 2" else "No")
    spec = StrategySpec(name="best-of-n", samples=3)
    (r,) = run_strategy(policy, [q("x")], spec, GREEDY, verifier_engine=judge)
    assert r.final_text == "candidate 2"
    assert len(policy.calls) == 1 and len(judge.calls) == 1

    rm = StrategySpec(name="best-of-n", samples=3, verifier="reward-model",
                      reward_model="/models/rm")
    seen: list[str] = []

    def reward(convs: Sequence[Conv], responses: Sequence[str]) -> list[float]:
        seen.extend(responses)
        return [{"candidate 0": 0.1, "candidate 1": 2.5, "candidate 2": -1.0}[r]
                for r in responses]

    (r,) = run_strategy(policy, [q("x")], rm, GREEDY, reward_fn=reward)
    assert r.final_text == "candidate 1"
    assert seen == ["candidate 0", "candidate 1", "candidate 2"]


def test_best_of_n_ties_go_to_the_earliest_sample() -> None:
    engine = ScriptedEngine(
        lambda conv, p, j: "Yes" if conv[-1]["content"] == SELF_EVAL_PROMPT else f"s{j}")
    (r,) = run_strategy(engine, [q("x")], StrategySpec(name="best-of-n", samples=3), GREEDY)
    assert r.final_text == "s0"


# --- self-correct ----------------------------------------------------------------------------


INSTRUCTION = "Check your work and answer again."


def _turn_of(conv: Conv) -> int:
    return 1 + sum(1 for m in conv if m["role"] == "assistant")


def test_self_correct_passes_the_instruction_and_stops_when_the_answer_repeats() -> None:
    answers = {"steady": ["The answer is 3", "The answer is 4", "The answer is 4", "X"],
               "wavering": ["The answer is 1", "The answer is 2", "The answer is 3",
                            "The answer is 4"]}
    engine = ScriptedEngine(lambda conv, p, j: answers[conv[0]["content"]][_turn_of(conv) - 1])
    spec = StrategySpec(name="self-correct", turns=4, instruction=INSTRUCTION, early_stop=True)
    steady, wavering = run_strategy(engine, [q("steady"), q("wavering")], spec, GREEDY)

    # one generate call per turn, batched; "steady" drops out after turn 3 (4 == 4)
    assert [len(convs) for convs, _ in engine.calls] == [2, 2, 2, 1]
    assert steady.turns_taken == 3 and wavering.turns_taken == 4
    assert [a.answer for a in steady.attempts] == ["3", "4", "4"]
    assert steady.final_answer == "4" and wavering.final_answer == "4"

    # turn 2's conversation = question + assistant(attempt 1) + user(instruction)
    turn2 = engine.calls[1][0][0]
    assert turn2 == [{"role": "user", "content": "steady"},
                     {"role": "assistant", "content": "The answer is 3"},
                     {"role": "user", "content": INSTRUCTION}]
    # turn 4 sees every earlier attempt, each followed by the instruction
    turn4 = engine.calls[3][0][0]
    assert [m["content"] for m in turn4] == [
        "wavering", "The answer is 1", INSTRUCTION, "The answer is 2", INSTRUCTION,
        "The answer is 3", INSTRUCTION]
    assert wavering.attempts[3].messages == turn4


def test_self_correct_pad_turns_carries_the_last_answer() -> None:
    engine = ScriptedEngine(lambda conv, p, j: "The answer is 7")
    spec = StrategySpec(name="self-correct", turns=3, instruction=INSTRUCTION)
    (r,) = run_strategy(engine, [q("x")], spec, GREEDY, pad_turns=True)
    assert r.turns_taken == 2  # turn 2 repeated turn 1
    assert [a.turn for a in r.attempts] == [1, 2, 3]
    assert [a.carried for a in r.attempts] == [False, False, True]
    assert r.attempts[2].answer == "7"


def test_self_correct_without_early_stop_runs_every_turn() -> None:
    engine = ScriptedEngine(lambda conv, p, j: "The answer is 7")
    spec = StrategySpec(name="self-correct", turns=3, early_stop=False)
    (r,) = run_strategy(engine, [q("x")], spec, GREEDY)
    assert r.turns_taken == 3 and len(engine.calls) == 3


def test_per_item_extractors_and_a_crashing_extractor() -> None:
    engine = ScriptedEngine(lambda conv, p, j: "B) because")

    def boom(text: str) -> str | None:
        raise RuntimeError("bad parse")

    results = run_strategy(engine, [q("a"), q("b")], StrategySpec(name="single"), GREEDY,
                           extract=[lambda t: t[0], boom])
    assert [r.final_answer for r in results] == ["B", None]
    with pytest.raises(ValueError, match="2 conversations"):
        run_strategy(engine, [q("a"), q("b")], StrategySpec(name="single"), GREEDY,
                     extract=[lambda t: t])


# --- mixture of agents -----------------------------------------------------------------------


def _moa_script(conv: Conv, params: SamplingParams, j: int) -> str:
    system = conv[0]["content"] if conv[0]["role"] == "system" else ""
    layer = 1 + system.count("Responses:")  # aggregator prompts carry the listing
    if "FINAL" in system or (layer > 1 and params.n == 1):
        return "final: " + " | ".join(sorted(line for line in system.splitlines()
                                             if line[:2] in {"1.", "2.", "3."}))
    return f"L{layer}-agent{j}"


def test_moa_aggregator_sees_every_agents_answer() -> None:
    engine = ScriptedEngine(_moa_script)
    spec = StrategySpec(name="moa", layers=2, agents=3)
    r1, r2 = run_strategy(engine, [q("one"), q("two")], spec, GREEDY)
    # layer 1 and layer 2 (n=3 agents on one engine each), then the final aggregator
    assert [(len(c), p.n) for c, p in engine.calls] == [(2, 3), (2, 3), (2, 1)]
    layer2_prompt = engine.calls[1][0][0]
    assert layer2_prompt[-1] == {"role": "user", "content": "one"}
    for k in range(3):
        assert f"{k + 1}. L1-agent{k}" in layer2_prompt[0]["content"]
    final_prompt = engine.calls[2][0][1]
    for k in range(3):
        assert f"{k + 1}. L2-agent{k}" in final_prompt[0]["content"]
    assert r1.final_text == "final: 1. L2-agent0 | 2. L2-agent1 | 3. L2-agent2"
    assert [(a.turn, a.agent) for a in r2.attempts] == [
        (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, None)]
    assert r1.turns_taken == 3


def test_moa_with_different_agent_engines() -> None:
    agents = [ScriptedEngine(lambda conv, p, j, k=k: f"model{k} says 4") for k in range(2)]
    aggregator = ScriptedEngine(lambda conv, p, j: "4 it is")
    spec = StrategySpec(name="moa", layers=1, agents=2, aggregator_prompt="Combine these.")
    (r,) = run_strategy(aggregator, [q("2+2?")], spec, GREEDY, agent_engines=agents)
    assert [len(a.calls) for a in agents] == [1, 1]
    assert agents[0].calls[0][1].n == 1  # one agent per engine: the caller's params
    (final_conv,), _ = aggregator.calls[0]
    assert final_conv[0]["content"].startswith("Combine these.")
    assert "1. model0 says 4" in final_conv[0]["content"]
    assert "2. model1 says 4" in final_conv[0]["content"]
    assert r.final_text == "4 it is"


def test_aggregator_conversation_merges_an_existing_system_message() -> None:
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    out = aggregator_conversation(conv, ["a", "b"], "Synthesise.")
    assert len(out) == 2 and out[0]["content"].startswith("Be brief.\n\nSynthesise.")
    assert out[1] == conv[1]


# --- OpenAI-compatible engine ------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/openai/v1/models":
            self._send({"object": "list", "data": [{"id": "corrector"}]})
        else:
            self.send_response(404)
            self.end_headers()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).bodies.append(body)
        question = body["messages"][-1]["content"]
        self._send({
            "choices": [{"index": i, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"{question}#{i}"},
                         "logprobs": {"content": [{"token": "x", "logprob": -0.5}] * 2}}
                        for i in range(body["n"])],
            "usage": {"prompt_tokens": 11, "completion_tokens": 2 * body["n"]},
        })


@pytest.fixture
def openai_server() -> Iterator[str]:
    _Handler.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_openai_engine_runs_a_strategy_over_http(openai_server: str) -> None:
    from scoreops.strategies.remote import OpenAIEngine

    engine = OpenAIEngine(openai_server)  # probes /openai/v1, discovers the model name
    assert engine.base_url.endswith("/openai/v1") and engine.model == "corrector"
    params = SamplingParams(max_new_tokens=5, temperature=0.5, n=1, seed=3, stop=("\n",))
    results = run_strategy(engine, [q("a"), q("b")], StrategySpec(name="self-consistency",
                                                                 samples=2), params,
                           extract=lambda t: t.split("#")[0])
    assert [r.final_text for r in results] == ["a#0", "b#0"]
    assert results[0].completion_tokens == 4 and results[0].prompt_tokens == 11
    body = _Handler.bodies[0]
    assert body["model"] == "corrector" and body["n"] == 2 and body["max_tokens"] == 5
    assert body["seed"] == 3 and body["stop"] == ["\n"] and body["temperature"] == 0.5
    assert results[0].attempts[1].text == "a#1"
    engine.close()
