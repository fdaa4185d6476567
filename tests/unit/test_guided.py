"""The guided strategy's search on a scripted engine whose right path is known, and its
critics (the tool critic's exact arithmetic above all)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from scoreops.api import StrategySpec
from scoreops.rollout import Completion, SamplingParams
from scoreops.strategies import run_strategy
from scoreops.strategies.critics import check_equations, evaluate_arithmetic, tool_critic
from scoreops.strategies.prompts import GUIDED_SELF_EVAL_PROMPT

Conv = list[dict[str, str]]
EOS = 1
QUESTION = [{"role": "user", "content": "Compute 2 + 3 + 4 step by step."}]
RIGHT = ["2 + 3 = 5\n", "5 + 4 = 9\n", "The answer is 9."]


class CharTokenizer:
    """One token per character (id = code point + 10), a prefix-stable chat template."""

    chat_template = "scripted"
    eos_token_id = EOS
    pad_token_id = 0

    def apply_chat_template(self, messages: Sequence[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = True, **_: Any) -> Any:
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
        if add_generation_prompt:
            text += "<assistant>"
        return self.encode(text) if tokenize else text

    def encode(self, text: str) -> list[int]:
        return [ord(c) + 10 for c in text]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 10) for i in ids if i >= 10)


class ScriptedSolver:
    """Solves QUESTION one line per call. Of the n samples of a prompt only the last follows
    the right path; the others get an arithmetic slip (a false equation) at the current
    step, whose wrong number is drawn from the row's seeded stream. The model prefers the
    slips (higher log-probabilities). A judge prompt (the self-eval question) is answered
    "Yes" for a right step and "No" for a wrong one, with probability 0.9."""

    def __init__(self, logprobs: bool = True) -> None:
        self.tokenizer = CharTokenizer()
        self.calls: list[tuple[int, int, int]] = []  # (rows, n, max_new_tokens)
        self.judge_calls = 0
        self.logprobs = logprobs

    def generate(self, conversations: Sequence[Conv], params: SamplingParams, *,
                 prompt_token_ids: Sequence[Sequence[int]] | None = None
                 ) -> list[list[Completion]]:
        if prompt_token_ids is None:
            prompt_token_ids = [self.tokenizer.apply_chat_template(c, tokenize=True)
                                for c in conversations]
        prompts = [self.tokenizer.decode(p) for p in prompt_token_ids]
        if GUIDED_SELF_EVAL_PROMPT in prompts[0]:
            self.judge_calls += 1
            return [[self._judge(p)] for p in prompts]
        self.calls.append((len(prompts), params.n, params.max_new_tokens))
        out = []
        for row, p in enumerate(prompts):
            partial = p.rsplit("<assistant>", 1)[1]
            out.append([self._step(partial, params, row, j) for j in range(params.n)])
        return out

    def _judge(self, prompt: str) -> Completion:
        answer = prompt.rsplit("<assistant>", 2)[1].split("</>")[0]
        step = answer.splitlines(keepends=True)[-1]
        ok = step in RIGHT and answer.startswith("".join(RIGHT[:RIGHT.index(step)]))
        text = "Yes" if ok else "No"
        return Completion(text=text, token_ids=self.tokenizer.encode(text)[:1],
                          logprobs=[-0.105] if self.logprobs else None, finish_reason="length")

    def _step(self, partial: str, params: SamplingParams, row: int, j: int) -> Completion:
        lines = partial.splitlines(keepends=True)
        depth = len(lines)
        rng = random.Random(f"{params.seed}-{row}-{j}" if params.seed is not None else None)
        right_so_far = partial == "".join(RIGHT[:depth])
        if lines and not lines[-1].endswith("\n"):  # a line cut by a token limit: finish it
            head, frag = "".join(lines[:-1]), lines[-1]
            line = RIGHT[depth - 1] if head == "".join(RIGHT[:depth - 1]) else ""
            text = line[len(frag):] if line.startswith(frag) else "?\n"
        elif right_so_far and j == params.n - 1:
            text = RIGHT[depth]
        else:
            value = 5 if depth == 0 else int(lines[-1].split("=")[-1]) if depth == 1 else None
            if depth == 0:
                text = f"2 + 3 = {rng.choice([6, 7, 8, 11])}\n"
            elif depth == 1:
                slip = (value or 0) + 4 + rng.choice([1, 2, 3])
                text = f"{value} + 4 = {slip}\n"
            else:
                text = f"The answer is {int(lines[-1].split('=')[-1])}."
        ids = self.tokenizer.encode(text)
        finish = "stop"
        if not text.endswith("\n"):
            ids.append(EOS)
        if len(ids) > params.max_new_tokens:
            ids, finish = ids[:params.max_new_tokens], "length"
        lp = -2.0 if text in RIGHT else -0.1
        return Completion(text=self.tokenizer.decode(ids).split("\n")[0], token_ids=ids,
                          logprobs=[lp] * len(ids) if self.logprobs else None,
                          finish_reason=finish)

    def sync_weights(self, model: Any) -> None:
        pass

    def close(self) -> None:
        pass


PARAMS = SamplingParams(max_new_tokens=64, temperature=0.7, seed=3)


def oracle(convs: Sequence[Conv], responses: Sequence[str]) -> list[float]:
    """A process reward model that knows the right steps."""
    return [10.0 if "".join(RIGHT).startswith(r) else -10.0 for r in responses]


def uninformed(convs: Sequence[Conv], responses: Sequence[str]) -> list[float]:
    return [0.0] * len(responses)


def guided(**kw: Any) -> StrategySpec:
    base: dict[str, Any] = {"name": "guided", "beam": 2, "expand": 2, "max_steps": 5,
                            "critic": "reward-model", "reward_model": "/unused"}
    return StrategySpec(**(base | kw))


def test_a_critic_that_knows_the_right_steps_finds_the_right_answer() -> None:
    engine = ScriptedSolver()
    (res,) = run_strategy(engine, [QUESTION], guided(), PARAMS, reward_fn=oracle)
    assert res.final_text == "".join(RIGHT)
    assert res.final_answer == "9"
    tree = res.search
    assert tree is not None and tree["steps"] == 3
    chosen = [tree["nodes"][n] for n in tree["chosen"]]
    assert [c["text"] for c in chosen] == RIGHT
    assert all(c["kept"] for c in chosen)
    assert tree["pruned"] > 0
    # the model preferred a slip at both arithmetic steps and the critic overrode it; at the
    # last step every sibling reads the answer off the right path (nothing to override)
    assert tree["overrides"] == 2


def test_without_a_knowing_critic_the_search_does_not_find_it() -> None:
    engine = ScriptedSolver()
    (res,) = run_strategy(engine, [QUESTION], guided(), PARAMS, reward_fn=uninformed)
    assert res.final_answer != "9"
    (single,) = run_strategy(ScriptedSolver(), [QUESTION], StrategySpec(name="single"),
                             SamplingParams(max_new_tokens=64, temperature=0.0))
    assert single.final_answer != "9"


def test_beam_and_expand_bound_the_calls() -> None:
    engine = ScriptedSolver()
    convs = [QUESTION, QUESTION, QUESTION]
    spec = guided(beam=3, expand=2, max_steps=4)
    run_strategy(engine, convs, spec, PARAMS, reward_fn=oracle)
    assert 1 <= len(engine.calls) <= spec.max_steps  # one batched call per step
    first_rows, first_n, _ = engine.calls[0]
    assert (first_rows, first_n) == (len(convs), spec.beam * spec.expand)
    for rows, n, _ in engine.calls[1:]:
        assert n == spec.expand
        assert rows <= len(convs) * spec.beam
    # never more than beam x expand candidates per conversation and step
    assert all(rows * n <= len(convs) * spec.beam * spec.expand for rows, n, _ in engine.calls)


def test_seeds_make_the_search_reproducible() -> None:
    def tree(seed: int) -> Any:
        params = SamplingParams(max_new_tokens=64, temperature=0.7, seed=seed)
        (res,) = run_strategy(ScriptedSolver(), [QUESTION], guided(), params,
                              reward_fn=uninformed)
        return res.search["nodes"], res.final_text

    assert tree(11) == tree(11)
    assert any(tree(11) != tree(s) for s in (12, 13, 14))


def test_the_tool_critic_catches_a_false_equation_and_passes_a_true_one() -> None:
    assert [e.holds for e in check_equations("So 2 + 3 = 5 apples.")] == [True]
    assert [e.holds for e in check_equations("She has 12 * 3 = 35 cookies.")] == [False]
    assert [e.holds for e in check_equations("$1,250 + 250 = $1,500")] == [True]
    assert [e.holds for e in check_equations("2 + 3 = 5 + 1 = 7")] == [True, False]
    assert [e.holds for e in check_equations("10 / 3 = 3.33, not 10 / 3 = 3.4")] == [True, False]
    assert [e.holds for e in check_equations("(2 + 3) × 4 = 20")] == [True]
    assert check_equations("x = 5 and 20% of 50 = 10") == []  # nothing plain to check
    assert evaluate_arithmetic("0.1 + 0.2") == evaluate_arithmetic("3/10")  # exact
    with pytest.raises(ValueError):
        evaluate_arithmetic("__import__('os').system('true')")
    critic = tool_critic(None)  # type: ignore[arg-type]
    from scoreops.strategies.critics import StepCandidate

    def cand(text: str) -> StepCandidate:
        return StepCandidate(QUESTION, [], [], "", [], text)

    assert critic([cand("2 + 3 = 5\n"), cand("2 + 3 = 6\n"), cand("Let us add.\n")]) == [
        1.0, 0.0, 1.0]


def test_the_tool_critic_steers_the_search_past_arithmetic_slips() -> None:
    (res,) = run_strategy(ScriptedSolver(), [QUESTION], guided(critic="tool"), PARAMS)
    assert res.final_answer == "9"
    assert res.search["critic"] == "tool"


def test_self_eval_critic_reads_the_verdicts_log_likelihood() -> None:
    engine = ScriptedSolver()
    (res,) = run_strategy(engine, [QUESTION], guided(critic="self-eval"), PARAMS)
    assert res.final_answer == "9"
    assert engine.judge_calls == len(engine.calls)  # one batched verdict call per step
    scores = {round(n["score"], 3) for n in res.search["nodes"]}
    assert scores <= {0.9, 0.1}
    assert res.search["critic_tokens"] == len(res.search["nodes"])


def test_self_eval_without_log_probabilities_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="log-probabilit"):
        run_strategy(ScriptedSolver(logprobs=False), [QUESTION], guided(critic="self-eval"),
                     PARAMS)


def test_an_engine_without_a_tokenizer_is_a_clear_error() -> None:
    engine = ScriptedSolver()
    engine.tokenizer = None  # type: ignore[assignment]
    with pytest.raises(ValueError, match="exact token ids"):
        run_strategy(engine, [QUESTION], guided(critic="tool"), PARAMS)


def test_weighted_critics_combine() -> None:
    spec = guided(critic_weights=[{"name": "tool", "weight": 1.0},
                                  {"name": "reward-model", "weight": 3.0}])
    (res,) = run_strategy(ScriptedSolver(), [QUESTION], spec, PARAMS, reward_fn=uninformed)
    assert res.final_answer == "9"  # the tool's zeros decide where the reward model cannot
    slips = [n for n in res.search["nodes"] if n["text"] not in RIGHT and "=" in n["text"]]
    assert slips and all(n["score"] == pytest.approx(0.375) for n in slips)  # 0*1/4+.5*3/4


def test_fixed_steps_stream_as_a_prefix_of_the_answer() -> None:
    pieces: list[tuple[int, str]] = []
    results = run_strategy(ScriptedSolver(), [QUESTION, QUESTION], guided(), PARAMS,
                           reward_fn=oracle, on_step=lambda i, t: pieces.append((i, t)))
    for i, res in enumerate(results):
        sent = "".join(t for j, t in pieces if j == i)
        assert sent and res.final_text.startswith(sent)
        assert sent.startswith(RIGHT[0])


def test_the_token_budget_is_never_exceeded() -> None:
    (res,) = run_strategy(ScriptedSolver(), [QUESTION], guided(token_budget=60), PARAMS,
                          reward_fn=oracle)
    assert res.completion_tokens <= 60
    assert res.search["stopped"] == "token budget"


def test_the_answer_length_limit_ends_the_search() -> None:
    params = SamplingParams(max_new_tokens=15, temperature=0.7, seed=3)
    (res,) = run_strategy(ScriptedSolver(), [QUESTION], guided(), params, reward_fn=oracle)
    assert len(res.final_text) <= 15  # one token per character
    assert "".join(RIGHT).startswith(res.final_text)  # a step cut short was continued


def test_the_spec_validates_the_critic_fields() -> None:
    with pytest.raises(ValueError, match="rewardModel"):
        StrategySpec(name="guided", critic="reward-model")
    with pytest.raises(ValueError, match="critic"):
        StrategySpec(name="guided", critic="oracle")
    with pytest.raises(ValueError, match="at most once"):
        StrategySpec(name="guided", critic_weights=[{"name": "tool"}, {"name": "tool"}])
    spec = StrategySpec.model_validate({"name": "guided", "beam": 3, "expand": 4,
                                        "maxSteps": 6, "stepDelimiter": "\n\n",
                                        "critic": "tool", "tokenBudget": 2048})
    assert (spec.beam, spec.expand, spec.max_steps, spec.step_delimiter) == (3, 4, 6, "\n\n")
    from scoreops.strategies.registry import get_strategy

    assert get_strategy("guided").caption(spec) == (
        "guided decoding, beam 3 × expand 4, up to 6 steps, critic tool")


def _checks(backend_kind: str = "hf", tokenizer: Any = "tok", **limits: Any) -> Any:
    from types import SimpleNamespace

    from scoreops.api.correctorservice import ServingLimits
    from scoreops.serving.checks import RequestChecks
    from scoreops.serving.config import ServingConfig

    config = ServingConfig(
        backend=backend_kind, model_uri="unused", predictor_url="http://predictor/v1",
        strategy=StrategySpec(name="guided", critic="tool"), limits=ServingLimits(**limits))
    backend = SimpleNamespace(tokenizer=None, decoder=None, returns_logprobs=False,
                              context_length=None)
    checks = RequestChecks(config, backend)  # type: ignore[arg-type]
    checks.tokenizer = None if tokenizer is None else CharTokenizer()
    return checks


def test_serving_budgets_are_checked_and_shared_over_the_answers() -> None:
    from scoreops.serving.protocol import ScoreopsOptions, ServingError

    checks = _checks(max_total_tokens=300, request_timeout_seconds=30)
    prepared = checks.prepare([QUESTION, QUESTION], n=3, max_tokens=16,
                              options=ScoreopsOptions(max_total_tokens=120))
    assert prepared.token_budget == 120
    assert prepared.strategy.token_budget == 120 // 6  # per answer: 2 prompts x n=3
    assert checks.prepare([QUESTION]).token_budget == 300  # the server's limit by default
    with pytest.raises(ServingError) as info:
        checks.prepare([QUESTION], options=ScoreopsOptions(max_total_tokens=301))
    assert (info.value.status, info.value.param) == (400, "scoreops.max_total_tokens")
    with pytest.raises(ServingError) as info:
        checks.prepare([QUESTION], options=ScoreopsOptions(timeout_seconds=31))
    assert (info.value.status, info.value.param) == (400, "scoreops.timeout_seconds")
    assert checks.prepare([QUESTION], options=ScoreopsOptions(timeout_seconds=5)).timeout == 5


def test_a_remote_predictor_refuses_guided_with_a_400() -> None:
    from scoreops.serving.protocol import ServingError

    with pytest.raises(ServingError) as info:
        _checks("openai", tokenizer=None).prepare([QUESTION])
    assert info.value.status == 400 and "exact token ids" in info.value.message


def test_the_recording_engine_holds_a_request_to_its_budget() -> None:
    from scoreops.serving.calls import Recording
    from scoreops.serving.protocol import ServingError
    from scoreops.serving.requests import RequestControl

    engine = Recording(ScriptedSolver(), RequestControl(), budget=50)
    (res,) = run_strategy(engine, [QUESTION], StrategySpec(name="self-consistency",
                                                           samples=4), PARAMS)
    assert engine.generated <= 50 and res.completion_tokens <= 50
    with pytest.raises(ServingError) as info:  # nothing left: refused, naming the field
        engine.generate([QUESTION] * 60, PARAMS)
    assert info.value.param == "scoreops.max_total_tokens"
