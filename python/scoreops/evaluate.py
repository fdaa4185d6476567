"""The EvalSuite job: every model × benchmark under the suite's strategy, with
self-correction metrics, per-sample records, a report and a JSON summary.

Run as a job (what an evaluator pod runs)::

    python -m scoreops.evaluate --spec /etc/scoreops/evalsuite.json [--limit N] [--output URI]

or in-process through ``scoreops eval FILE`` / ``scoreops run FILE``
(:func:`run_evalsuite`). Outputs under ``spec.output.uri``:

* ``records/<model>/<benchmark>.jsonl`` — one line per item: the prompt, every turn's
  output, its extracted answer and whether it was correct (GSM8K: strict and flexible too);
  an answer the extractor cannot read has ``"extracted": null`` and scores wrong;
* ``summary.json`` — the operator copies it into the EvalSuite's status::

      {"models": {MODEL: {BENCHMARK: {"acc_t1", "acc_t2", "acc_tk", "delta", "delta_i2c",
                                      "delta_c2i", "n", "ci": {KEY: [lo, hi]}, ...}}},
       "report": "<output>/report.md", ...}

  GSM8K adds ``acc_t1_strict``, ``acc_t2_strict``, ``delta_strict``, … and the same with
  ``_flexible``. Log-likelihood benchmarks report ``acc``, ``acc_norm`` (with ``ci``) and
  ``mode: "loglikelihood"`` instead of the turn metrics;
* ``report.md`` — one table of models × benchmarks, then a SCoRe-style table per benchmark;
* ``chart.png`` — Acc@t1 and Acc@t2 per benchmark and model, with 95% intervals.

Which model is evaluated:

* ``uri`` — loaded with :func:`scoreops.models.load_model` (s3://, store://, a path,
  builtin://);
* ``scoreRun`` — the run's final weights. In-process runs write them to
  ``store://runs/<name>/final`` (the local runner's layout), which is what is loaded; on a
  cluster the operator resolves the ScoreRun to its ``spec.output.uri`` + ``/final`` and
  passes that as ``uri``;
* ``endpoint`` — an OpenAI-compatible server, through
  :class:`scoreops.strategies.remote.OpenAIEngine`.

Turns and metrics: for ``self-correct`` turn t is the t-th attempt; an item that stopped
early (``strategy.earlyStop``) carries its last answer into the remaining turns, so Acc@tK
counts every item. For ``self-consistency``, ``best-of-n`` and ``moa`` "turn 1" is the
first single sample (layer-1 agent 1 for moa) and "turn 2" the strategy's final answer, so
Δ is the strategy's gain over one attempt. ``single`` has one turn (Acc@t2 = Acc@t1).

What is reused between turns: each turn is one batched ``generate`` over all items still
going, and turn k+1's prompt is turn k's prompt token ids + its completion ids + the
instruction's tokens (no re-tokenization), so a prefix-caching engine (vLLM) serves the
shared prefix from cache. The transformers engine keeps no KV cache between calls: it
recomputes the prefix once per item per turn.
"""

from __future__ import annotations

import argparse
import json
import logging
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from scoreops.api import EvalSuite, EvalSuiteSpec
    from scoreops.api.evalsuite import BenchmarkRef, EvalModel
    from scoreops.benchmarks import Benchmark
    from scoreops.rollout import RolloutEngine
    from scoreops.strategies import StrategyResult

__all__ = [
    "BenchmarkResult",
    "LoadedModel",
    "evaluate_benchmark",
    "evaluate_suite",
    "loglikelihoods",
    "main",
    "run_evalsuite",
    "score_run_uri",
]

log = logging.getLogger("scoreops.evaluate")

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
#: extra 0/1 metrics a scorer may report next to ``correct``, summarised per turn
SIDE_METRICS = ("strict", "flexible")


def score_run_uri(name: str) -> str:
    """Where an in-process ScoreRun named ``name`` leaves its final weights."""
    return f"store://runs/{name}/final"


# -- models ------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model under test: its generation engine and, for local weights, model + tokenizer
    (log-likelihood scoring needs the logits)."""

    name: str
    engine: RolloutEngine
    model: Any = None
    tokenizer: Any = None
    source: str = ""
    dtype: str | None = None  # set where ``model`` is loaded on first use (vLLM generates)
    device: str | None = None

    def ensure_model(self) -> Any:
        """The transformers model, loaded from ``source`` on first use if not yet loaded."""
        if self.model is None and self.dtype is not None:
            from scoreops.models import load_model

            self.model, _ = load_model(self.source, dtype=self.dtype, device=self.device)
        return self.model

    def close(self) -> None:
        self.engine.close()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _local_engine(uri: str, name: str, batch_size: int, engine_kind: str,
                  max_model_len: int | None = None) -> LoadedModel:
    from scoreops.models import load_model

    device = _device()
    dtype = "float32" if device == "cpu" else "bfloat16"
    if engine_kind == "vllm":
        from scoreops.models import resolve_model
        from scoreops.rollout.vllm import VLLMEngine

        # vLLM generates; the transformers model is loaded only if a log-likelihood
        # benchmark asks for logits (LoadedModel.ensure_model)
        engine = VLLMEngine.from_path(str(resolve_model(uri)), dtype=dtype,
                                      max_model_len=max_model_len, kv_sequences=batch_size)
        return LoadedModel(name=name, engine=engine, tokenizer=engine.tokenizer, source=uri,
                           dtype=dtype, device=device)
    from scoreops.rollout import HFEngine

    model, tokenizer = load_model(uri, dtype=dtype, device=device)
    engine = HFEngine(model, tokenizer, device=device, max_batch_size=batch_size)
    return LoadedModel(name=name, engine=engine, model=model, tokenizer=tokenizer, source=uri)


def load_eval_model(ref: EvalModel, spec: EvalSuiteSpec) -> LoadedModel:
    """The engine for one ``spec.models`` entry."""
    if ref.endpoint:
        from scoreops.strategies.remote import OpenAIEngine

        return LoadedModel(name=ref.name, engine=OpenAIEngine(
            ref.endpoint, max_concurrency=spec.generation.batch_size), source=ref.endpoint)
    uri = ref.uri if ref.uri else score_run_uri(str(ref.score_run))
    return _local_engine(uri, ref.name, spec.generation.batch_size, spec.generation.engine)


# -- answer extraction ---------------------------------------------------------------------


def answer_extractor(bench: Benchmark, item: dict[str, Any]) -> Callable[[str], str | None]:
    """What a completion answers, in the terms the benchmark's scorer checks: GSM8K the
    flexible (last-number) extraction, math the final answer, multiple choice the option
    letter, BBH the text after "the answer is"."""
    from scoreops.rewards import extract as ex

    custom = getattr(bench, "extract", None)
    if callable(custom):
        return lambda text: custom(text, item)
    if bench.name == "gsm8k":
        def gsm8k(text: str) -> str | None:
            found = ex.extract_flexible(text)
            return ex.lm_eval_normalize(found) if found is not None else None
        return gsm8k
    if bench.kind == "multiple-choice":
        choices = list(item.get("choices") or [])

        def choice(text: str) -> str | None:
            idx = ex.extract_choice(text, choices)
            return string.ascii_uppercase[idx] if idx is not None else None
        return choice
    if bench.kind == "generative-text":
        from scoreops.benchmarks.bbh import bbh_extract_answer

        return lambda text: bbh_extract_answer(text) or None
    return ex.extract_final_answer


# -- log-likelihood ------------------------------------------------------------------------


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split: trailing spaces of the context move to the
    continuation; the continuation's tokens are those of ``context + continuation`` after
    the context's tokens (no special tokens added)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    if not ctx:  # an empty context conditions on the BOS/EOS token, as lm-eval does
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
            else tokenizer.eos_token_id
        return [prefix], list(whole)
    return list(ctx), list(whole[len(ctx):])


def loglikelihoods(
    model: Any, tokenizer: Any, requests: Sequence[tuple[str, str]], *, batch_size: int = 16,
    max_length: int | None = None, pack: bool = True,
) -> list[tuple[float, bool]]:
    """Sum of log p(continuation tokens | context) and whether the continuation is the
    greedy one, per (context, continuation) — lm-evaluation-harness's ``loglikelihood``.

    Requests that share a context (the options of one multiple-choice question) share its
    forward pass: each context is one row with all its continuations packed after it as
    branches under a tree-shaped attention mask (see :func:`_packed_batch`), so the
    context's tokens are computed once instead of once per option, and only positions that
    predict continuation tokens go through the output head and the vocabulary-sized
    log-softmax. A batch holds ``batch_size`` contexts (for multiple choice, ``batch_size``
    questions), longest first. Requests whose context plus continuation exceed
    ``max_length`` (default: the model's ``max_position_embeddings``), and all requests of
    a model whose attention implementation takes no custom mask, are scored one request
    per row with lm-evaluation-harness's left truncation (``pack=False`` scores every
    request that way).
    """
    import torch

    limit = max_length or int(getattr(model.config, "max_position_embeddings", 2048))
    encoded = [_encode_pair(tokenizer, c, x) for c, x in requests]
    results: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(encoded):
        groups.setdefault(tuple(ctx), []).append(i)
    shared: list[tuple[tuple[int, ...], list[int]]] = []
    alone: list[int] = []
    for ctx, members in groups.items():
        if len(ctx) + max(len(encoded[i][1]) for i in members) - 1 > limit:
            alone.extend(members)
        else:
            shared.append((ctx, members))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Longest first: padding stays small and an out-of-memory error shows on the first batch.
    shared.sort(key=lambda g: -len(g[0]) - sum(len(encoded[i][1]) - 1 for i in g[1]))
    if not pack or getattr(model.config, "_attn_implementation", None) not in ("sdpa",
                                                                               "eager"):
        alone.extend(i for _, members in shared for i in members)  # no custom masks there
        shared = []
    with torch.inference_mode():
        for start in range(0, len(shared), batch_size):
            _packed_batch(model, shared[start:start + batch_size], encoded, results, pad,
                          device)
        _one_per_row(model, sorted(alone), encoded, results, pad, device, limit, batch_size)
    return results


def _score_span(logprobs: Any, target: list[int]) -> tuple[float, bool]:
    import torch

    index = torch.tensor(target, dtype=torch.long, device=logprobs.device)
    total = float(logprobs.gather(-1, index[:, None]).sum())
    return total, bool((logprobs.argmax(-1) == index).all())


def _packed_batch(
    model: Any, groups: list[tuple[tuple[int, ...], list[int]]],
    encoded: list[tuple[list[int], list[int]]], results: list[tuple[float, bool]],
    pad: int, device: Any,
) -> None:
    """Score a batch of context groups, one row per context.

    A row is the context followed by every continuation of its group except their last
    tokens, each continuation a branch that sees the context and itself but not its
    siblings (a 4-D attention mask; positions restart after the context for each branch).
    The context's last position predicts every branch's first token. Rows are left-padded
    so that all of them end at the last column and only the last ``keep`` columns, which
    hold every predicting position, go through the output head.
    """
    import torch

    rows: list[list[int]] = []
    positions: list[list[int]] = []
    branches: list[list[tuple[int, int, int]]] = []  # (request, first column, length)
    for ctx, members in groups:
        tokens, pos, spans = list(ctx), list(range(len(ctx))), []
        for i in members:
            fed = encoded[i][1][:-1]
            spans.append((i, len(tokens), len(fed)))
            tokens.extend(fed)
            pos.extend(range(len(ctx), len(ctx) + len(fed)))
        rows.append(tokens)
        positions.append(pos)
        branches.append(spans)
    width = max(len(r) for r in rows)
    keep = max(len(r) - len(ctx) + 1 for r, (ctx, _) in zip(rows, groups, strict=True))
    dtype = next(model.parameters()).dtype
    blocked = torch.finfo(dtype).min
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    pos_ids = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for r, (tokens, (ctx, _)) in enumerate(zip(rows, groups, strict=True)):
        off = width - len(tokens)
        ids[r, off:] = torch.tensor(tokens, dtype=torch.long)
        pos_ids[r, off:] = torch.tensor(positions[r], dtype=torch.long)
        n = len(ctx)
        allowed[r, off:off + n, off:off + n] = causal[:n, :n]
        for _, first, length in branches[r]:
            lo, hi = off + first, off + first + length
            allowed[r, lo:hi, off:off + n] = True
            allowed[r, lo:hi, lo:hi] = causal[:length, :length]
        idx = torch.arange(off)
        allowed[r, idx, idx] = True  # padding sees itself only: no empty softmax row
    mask = torch.zeros((len(rows), 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], blocked)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                   position_ids=pos_ids.to(device), use_cache=False,
                   logits_to_keep=keep).logits
    start = width - keep  # column of logits[:, 0]
    for r, (tokens, (ctx, _)) in enumerate(zip(rows, groups, strict=True)):
        off = width - len(tokens)
        ctx_last = off + len(ctx) - 1 - start
        for i, first, length in branches[r]:
            cols = [ctx_last, *range(off + first - start, off + first + length - start)]
            span = torch.log_softmax(logits[r, cols].float(), dim=-1)
            results[i] = _score_span(span, encoded[i][1])


def _one_per_row(
    model: Any, indices: list[int], encoded: list[tuple[list[int], list[int]]],
    results: list[tuple[float, bool]], pad: int, device: Any, limit: int, batch_size: int,
) -> None:
    """Context and continuation in one row per request, truncated on the left to ``limit``
    tokens as lm-evaluation-harness does; right-padded batches sorted by length."""
    import torch

    order = sorted(indices, key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        inputs = [(encoded[i][0] + encoded[i][1])[-(limit + 1):][:-1] for i in rows]
        width = max(len(x) for x in inputs)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, x in enumerate(inputs):
            ids[r, :len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, :len(x)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for r, i in enumerate(rows):
            cont = encoded[i][1]
            length = len(inputs[r])
            span = torch.log_softmax(logits[r, length - len(cont):length].float(), dim=-1)
            results[i] = _score_span(span, cont)


# -- one benchmark -------------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    """Metrics and records of one model on one benchmark."""

    model: str
    benchmark: str
    mode: str
    metrics: dict[str, Any]
    records: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _bool(x: Any) -> bool:
    return bool(x) and float(x) > 0.5


def _safe_score(bench: Benchmark, text: str, item: dict[str, Any]) -> dict[str, Any]:
    try:
        return dict(bench.score(text, item))
    except Exception as exc:  # a scorer crash on odd output scores wrong, visibly
        return {"correct": 0.0, "error": f"{type(exc).__name__}: {exc}"}


def _turns_for_metrics(strategy: str, result: StrategyResult) -> list[tuple[str, Any]]:
    """(label, attempt) pairs whose correctness are "turns" 1..K (see the module doc)."""
    from scoreops.strategies import Attempt

    if strategy in ("self-correct", "single"):
        return [(f"t{a.turn}", a) for a in result.attempts]
    final = Attempt(text=result.final_text, answer=result.final_answer, turn=2, messages=[])
    return [("t1", result.attempts[0]), ("t2", final)]


def _progress(console: Console | None) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    transient=False)


def _prepare_items(
    bench: Benchmark, ref: BenchmarkRef, items: Sequence[dict[str, Any]],
    fewshot_pool: Sequence[dict[str, Any]] | None, system_prompt: str | None, loglik: bool,
) -> tuple[list[tuple[dict[str, Any], Any]], list[str]]:
    """(item, prompt) pairs and a list of skipped rows (why), never raising on a bad row."""
    ready: list[tuple[dict[str, Any], Any]] = []
    skipped: list[str] = []
    for k, item in enumerate(items):
        try:
            if loglik:
                prompt: Any = bench.loglikelihood_requests(item, ref.fewshot, fewshot_pool)
            else:
                prompt = bench.format_prompt(item, ref.fewshot, fewshot_pool)
                if system_prompt and not (prompt and prompt[0].get("role") == "system"):
                    prompt = [{"role": "system", "content": system_prompt}, *prompt]
            if "answer" not in item:
                raise KeyError("answer")
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            skipped.append(f"item {item.get('id', k)}: {type(exc).__name__}: {exc}")
            continue
        ready.append((item, prompt))
    return ready, skipped


def evaluate_benchmark(
    loaded: LoadedModel,
    bench: Benchmark,
    ref: BenchmarkRef,
    items: Sequence[dict[str, Any]],
    spec: EvalSuiteSpec,
    *,
    fewshot_pool: Sequence[dict[str, Any]] | None = None,
    agent_engines: list[RolloutEngine] | None = None,
    console: Console | None = None,
    chunk: int | None = None,
) -> BenchmarkResult:
    """Evaluate one model on the given items of one benchmark."""
    from scoreops.metrics import accuracy_with_ci, correction_metrics
    from scoreops.rollout import SamplingParams
    from scoreops.strategies import run_strategy

    started = time.perf_counter()
    loglik = ref.mode == "loglikelihood"
    ready, skipped = _prepare_items(bench, ref, items, fewshot_pool,
                                    spec.generation.system_prompt, loglik)
    for why in skipped:
        log.warning("%s: skipped malformed %s", bench.name, why)
    records: list[dict[str, Any]] = []
    label = f"{loaded.name} · {bench.name}" + (" (loglikelihood)" if loglik else "")
    # Items per call: several batches, so that length sorting has something to work with.
    step = chunk or max(1, spec.generation.batch_size * (8 if loglik else 4))
    with _progress(console) as progress:
        task = progress.add_task(label, total=len(ready))
        if loglik:
            if loaded.ensure_model() is None:
                raise ValueError(f"{loaded.name}: loglikelihood mode needs local weights")
            for start in range(0, len(ready), step):
                part = ready[start:start + step]
                flat = [req for _, reqs in part for req in reqs]
                scores = loglikelihoods(loaded.model, loaded.tokenizer, flat,
                                        batch_size=spec.generation.batch_size)
                k = 0
                for item, reqs in part:
                    lls = scores[k:k + len(reqs)]
                    k += len(reqs)
                    s = bench.score_loglikelihood(item, [ll for ll, _ in lls])
                    records.append({
                        "index": len(records), "id": item.get("id"), "context": reqs[0][0],
                        "choices": [c for _, c in reqs], "gold": item["answer"],
                        "loglikelihoods": [ll for ll, _ in lls],
                        "greedy": [g for _, g in lls],
                        "acc": _bool(s.get("acc")), "acc_norm": _bool(s.get("acc_norm")),
                    })
                progress.advance(task, len(part))
            acc, acc_ci = accuracy_with_ci([r["acc"] for r in records])
            norm, norm_ci = accuracy_with_ci([r["acc_norm"] for r in records])
            metrics: dict[str, Any] = {
                "mode": "loglikelihood", "n": len(records), "acc": acc, "acc_norm": norm,
                "ci": {"acc": list(acc_ci), "acc_norm": list(norm_ci)}}
        else:
            strategy = spec.strategy
            gen = spec.generation
            params = SamplingParams(max_new_tokens=gen.max_new_tokens,
                                    temperature=gen.temperature, top_p=gen.top_p, n=1,
                                    seed=spec.seed, stop=tuple(getattr(bench, "stop", ()) or ()))
            rows: list[list[dict[str, Any]]] = []
            notes: set[str] = set()
            for start in range(0, len(ready), step):
                part = ready[start:start + step]
                results = run_strategy(
                    loaded.engine, [p for _, p in part], strategy, params,
                    extract=[answer_extractor(bench, it) for it, _ in part],
                    agent_engines=agent_engines, pad_turns=True)
                for (item, prompt), res in zip(part, results, strict=True):
                    notes.update(res.notes)
                    turns = []
                    for tag, att in _turns_for_metrics(strategy.name, res):
                        s = _safe_score(bench, att.text, item)
                        turn = {"turn": tag, "output": att.text, "extracted": att.answer,
                                "correct": _bool(s.get("correct")),
                                "carried": bool(getattr(att, "carried", False))}
                        for key in SIDE_METRICS:
                            if key in s:
                                turn[key] = _bool(s[key])
                        if "error" in s:
                            turn["error"] = s["error"]
                        turns.append(turn)
                    rec: dict[str, Any] = {
                        "index": len(records), "id": item.get("id"), "prompt": prompt,
                        "gold": item["answer"], "turns": turns,
                        "final": {"output": res.final_text, "extracted": res.final_answer},
                        "turns_taken": res.turns_taken,
                        "completion_tokens": res.completion_tokens,
                        "prompt_tokens": res.prompt_tokens,
                    }
                    if strategy.name not in ("self-correct", "single"):
                        rec["attempts"] = [
                            {"turn": a.turn, "agent": a.agent, "output": a.text,
                             "extracted": a.answer, "score": a.score} for a in res.attempts]
                    records.append(rec)
                    rows.append(turns)
                progress.advance(task, len(part))
            metrics = {"mode": "generative", "strategy": strategy.name}
            if rows:
                metrics.update(correction_metrics(
                    [[t["correct"] for t in r] for r in rows]).to_dict())
                for key in SIDE_METRICS:
                    if all(key in t for r in rows for t in r):
                        side = correction_metrics([[t[key] for t in r] for r in rows]).to_dict()
                        for name in ("acc_t1", "acc_t2", "acc_tk", "delta", "delta_i2c",
                                     "delta_c2i"):
                            metrics[f"{name}_{key}"] = side[name]
                        metrics["ci"].update({f"{k}_{key}": v for k, v in side["ci"].items()})
            else:
                metrics["n"] = 0
            metrics["unparsed_t1"] = sum(1 for r in rows if r and r[0]["extracted"] is None)
            metrics["completion_tokens"] = sum(r["completion_tokens"] for r in records)
            if notes:
                metrics["notes"] = sorted(notes)
    seconds = time.perf_counter() - started
    metrics["seconds"] = round(seconds, 3)
    if skipped:
        metrics["skipped"] = len(skipped)
    return BenchmarkResult(model=loaded.name, benchmark=bench.name, mode=ref.mode,
                           metrics=metrics, records=records, skipped=skipped, seconds=seconds)


# -- the suite -------------------------------------------------------------------------------


def _jsonl(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)


def _load_items(spec: EvalSuiteSpec, limit: int | None) -> dict[str, Any]:
    """Benchmarks and their items, all checked before any model is loaded."""
    from scoreops.benchmarks import get_benchmark, load_benchmark_items, load_fewshot_items

    loaded: dict[str, Any] = {}
    for ref in spec.benchmarks:
        bench = get_benchmark(ref.name)  # ValueError listing the known names
        if ref.mode == "loglikelihood" and not bench.supports_loglikelihood:
            raise ValueError(f"benchmark {ref.name} has no loglikelihood mode")
        caps = [x for x in (limit, ref.limit) if x is not None]
        n = min(caps) if caps else None
        items = load_benchmark_items(ref.name, root=spec.data_root, limit=n,
                                     subjects=ref.subjects)
        pool = load_fewshot_items(ref.name, root=spec.data_root) if ref.fewshot else None
        key = _bench_key(ref)
        loaded[key] = (bench, ref, items, pool)
    return loaded


def _bench_key(ref: BenchmarkRef) -> str:
    return ref.name + ("_ll" if ref.mode == "loglikelihood" else "")


def _report(name: str, spec: EvalSuiteSpec, summary: dict[str, Any], chart: str | None) -> str:
    from scoreops.report import correction_rows, results_table

    models = summary["models"]
    bench_keys = list(dict.fromkeys(k for m in models.values() for k in m))
    s = spec.strategy
    strat = {"self-correct": f"self-correct, {s.turns} turns",
             "self-consistency": f"self-consistency@{s.samples}",
             "best-of-n": f"best-of-{s.samples} ({s.verifier})",
             "moa": f"mixture of agents, {s.layers} layers × {s.agents} agents",
             "single": "single attempt"}[s.name]
    lines = [f"# EvalSuite {name}", "",
             f"Strategy: {strat}. Generation: max {spec.generation.max_new_tokens} new tokens, "
             f"temperature {spec.generation.temperature}. Intervals are 95% (Wilson; Δ: "
             "Newcombe's paired score interval).", ""]
    if s.name != "self-correct":
        lines += ["t1 is one attempt; t2 is the strategy's final answer.", ""]
    overview = []
    for model, benches in models.items():
        row: dict[str, Any] = {"model": model}
        for key in bench_keys:
            m = benches.get(key)
            if m is None:
                row[key] = None
            elif m.get("mode") == "loglikelihood":
                row[key] = f"acc {m['acc']:.3f} / norm {m['acc_norm']:.3f}"
            elif m.get("n"):
                row[key] = f"{m['acc_t1']:.3f} → {m['acc_t2']:.3f} ({m['delta']:+.3f})"
        overview.append(row)
    lines += ["## Overview (Acc@t1 → Acc@t2 (Δ))", "", results_table(overview)]
    for key in bench_keys:
        per_model = {m: b[key] for m, b in models.items() if key in b}
        lines += [f"## {key}", ""]
        first = next(iter(per_model.values()))
        if first.get("mode") == "loglikelihood":
            rows = [{"model": m, "acc": f"{v['acc']:.3f} [{v['ci']['acc'][0]:.2f}, "
                                        f"{v['ci']['acc'][1]:.2f}]",
                     "acc_norm": f"{v['acc_norm']:.3f} [{v['ci']['acc_norm'][0]:.2f}, "
                                 f"{v['ci']['acc_norm'][1]:.2f}]", "n": v["n"]}
                    for m, v in per_model.items()]
            lines += [results_table(rows), ""]
            continue
        lines += [results_table(correction_rows(
            {m: v for m, v in per_model.items() if v.get("n")}, label="model")), ""]
        for side in SIDE_METRICS:
            if all(f"acc_t1_{side}" in v for v in per_model.values()):
                side_rows = {f"{m} ({side})": {k.removesuffix(f"_{side}"): v2
                                               for k, v2 in v.items() if k.endswith(f"_{side}")}
                             | {"n": v["n"], "ci": {k.removesuffix(f"_{side}"): v2 for k, v2
                                                    in v["ci"].items() if k.endswith(side)}}
                             for m, v in per_model.items()}
                caption = {"strict": "strict-match (the number after `####`)",
                           "flexible": "flexible-extract (the last number)"}[side]
                lines += [f"GSM8K {caption}, as lm-evaluation-harness reports it:", "",
                          results_table(correction_rows(side_rows, label="model")), ""]
        for m, v in per_model.items():
            extra = []
            if v.get("unparsed_t1"):
                extra.append(f"{v['unparsed_t1']} first attempts had no readable answer")
            if v.get("skipped"):
                extra.append(f"{v['skipped']} malformed items skipped")
            if extra:
                lines += [f"- {m}: " + "; ".join(extra)]
        lines.append("")
    if chart:
        lines += ["![Acc@t1 and Acc@t2](chart.png)", ""]
    lines += ["Per-sample records: `records/<model>/<benchmark>.jsonl`.", ""]
    return "\n".join(lines)


def _chart(summary: dict[str, Any]) -> bytes:
    from scoreops.report import bar_chart

    data: dict[str, dict[str, float | None]] = {}
    errors: dict[str, dict[str, Sequence[float]]] = {}
    for model, benches in summary["models"].items():
        for key, m in benches.items():
            group, err = data.setdefault(key, {}), errors.setdefault(key, {})
            if m.get("mode") == "loglikelihood":
                group[f"{model} acc"] = m["acc"]
                err[f"{model} acc"] = m["ci"]["acc"]
            elif m.get("n"):
                for t in ("t1", "t2"):
                    group[f"{model} Acc@{t}"] = m[f"acc_{t}"]
                    err[f"{model} Acc@{t}"] = m["ci"][f"acc_{t}"]
    return bar_chart(data, errors=errors, ylim=(0.0, 1.05), ylabel="accuracy",
                     title="Accuracy per benchmark (95% CI)")


def evaluate_suite(
    spec: EvalSuiteSpec,
    *,
    name: str = "evalsuite",
    limit: int | None = None,
    output: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the whole suite and write its outputs; returns the summary (``summary.json``)."""
    from scoreops import storage
    from scoreops.report import correction_rows, print_table

    out = output or spec.output.uri
    started = time.perf_counter()
    plan = _load_items(spec, limit)
    summary: dict[str, Any] = {
        "name": name, "strategy": spec.strategy.to_wire(), "models": {},
        "records": {}, "report": storage.join(out, "report.md"),
        "summary": storage.join(out, "summary.json"),
    }
    agent_engines: list[RolloutEngine] | None = None
    agents: list[LoadedModel] = []
    if spec.strategy.name == "moa" and spec.strategy.agent_models:
        agents = [_local_engine(uri, f"agent{i}", spec.generation.batch_size,
                                spec.generation.engine)
                  for i, uri in enumerate(spec.strategy.agent_models)]
        agent_engines = [a.engine for a in agents]
    try:
        for ref in spec.models:
            loaded = load_eval_model(ref, spec)
            try:
                per_bench: dict[str, Any] = {}
                for key, (bench, bref, items, pool) in plan.items():
                    result = evaluate_benchmark(loaded, bench, bref, items, spec,
                                                fewshot_pool=pool, agent_engines=agent_engines,
                                                console=console)
                    uri = storage.join(out, "records", ref.name, f"{key}.jsonl")
                    storage.write_text(uri, _jsonl(result.records))
                    summary["records"].setdefault(ref.name, {})[key] = uri
                    per_bench[key] = result.metrics
                    summary["models"][ref.name] = per_bench
                    # the summary so far, so a long suite shows progress
                    storage.write_json(summary["summary"], summary)
            finally:
                loaded.close()
    finally:
        for a in agents:
            a.close()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    chart_uri = storage.join(out, "chart.png")
    try:
        storage.write_bytes(chart_uri, _chart(summary))
        summary["chart"] = chart_uri
    except Exception as exc:  # a chart must never fail an evaluation
        log.warning("could not draw the chart: %s", exc)
    storage.write_text(summary["report"], _report(name, spec, summary, summary.get("chart")))
    storage.write_json(summary["summary"], summary)
    for key in plan:
        gen = {m: b[key] for m, b in summary["models"].items()
               if key in b and b[key].get("mode") == "generative" and b[key].get("n")}
        if gen:
            print_table(correction_rows(gen, label="model"), title=key, console=console)
    return summary


def run_evalsuite(resource: EvalSuite, limit: int | None = None,
                  output: str | None = None) -> int:
    """``scoreops eval`` / ``scoreops run`` for an EvalSuite: evaluate in-process, print the
    tables and where the report is. Exit status 0, 2 for a bad suite (unknown benchmark,
    data not imported), 1 when the run failed."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        summary = evaluate_suite(resource.spec, name=resource.metadata.name, limit=limit,
                                 output=output, console=console)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:
        log.exception("evaluation failed")
        print(f"error: evaluation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    console.print(f"report: {summary['report']}\nsummary: {summary['summary']}")
    return EXIT_OK


def _read_spec(path: str) -> tuple[str, EvalSuiteSpec]:
    import yaml

    from scoreops.api import EvalSuite, parse_resource
    from scoreops.api.evalsuite import EvalSuiteSpec

    doc = yaml.safe_load(Path(path).read_text())  # JSON is YAML
    if isinstance(doc, dict) and "kind" in doc:
        resource = parse_resource(doc)
        if not isinstance(resource, EvalSuite):
            raise ValueError(f"{path} holds a {resource.kind}, not an EvalSuite")
        return resource.metadata.name, resource.spec
    if isinstance(doc, dict) and "spec" in doc:
        doc = doc["spec"]
    return "evalsuite", EvalSuiteSpec.model_validate(doc)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scoreops.evaluate --spec FILE``: the evaluator job's entrypoint."""
    parser = argparse.ArgumentParser(
        prog="python -m scoreops.evaluate",
        description="Run an EvalSuite (the resource, or just its spec, as JSON or YAML).")
    parser.add_argument("--spec", required=True, help="EvalSuite JSON/YAML file")
    parser.add_argument("--limit", type=int, help="items per benchmark")
    parser.add_argument("--output", help="override spec.output.uri")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pydantic import ValidationError

    from scoreops.api import InvalidResource

    try:
        name, spec = _read_spec(args.spec)
    except FileNotFoundError:
        print(f"error: {args.spec}: no such file", file=sys.stderr)
        return EXIT_INVALID
    except (InvalidResource, ValidationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    from scoreops.api import EvalSuite
    from scoreops.api.base import ObjectMeta

    resource = EvalSuite(metadata=ObjectMeta(name=name), spec=spec)
    return run_evalsuite(resource, limit=args.limit, output=args.output)


if __name__ == "__main__":
    sys.exit(main())
