"""The EvalSuite job: every model × benchmark under the suite's strategy, with
self-correction metrics, per-sample records, a report and a JSON summary.

Run as a job (what an evaluator pod runs)::

    python -m scoreops.evaluate --spec /etc/scoreops/evalsuite.json [--limit N] [--output URI]

or in-process through ``scoreops eval FILE`` / ``scoreops run FILE``
(:func:`run_evalsuite`). Outputs under ``spec.output.uri``:

* ``records/<model>/<benchmark>.jsonl`` — one line per item: the prompt, every turn's
  output, its extracted answer and whether it was correct (and each side metric the
  benchmark declares, GSM8K: strict and flexible); an answer the extractor cannot read has
  ``"extracted": null`` and scores wrong;
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

Where each concern lives:

* :mod:`.models` — the model under test: an engine per ``spec.models`` entry, moa agents;
* :mod:`.loglik` — log-likelihood scoring (options packed under a tree-shaped mask);
* :mod:`.generation` — the generative run of one benchmark: the strategy, answer extraction
  (the benchmark's declared ``extract``), per-turn scoring, records and metrics;
* :mod:`.benchmark` — one benchmark: item preparation, the log-likelihood run, dispatch;
* :mod:`.suite` — the suite: every model × benchmark, the outputs;
* :mod:`.report` — ``report.md`` and ``chart.png``;
* :mod:`.job` — the ``python -m scoreops.evaluate`` entrypoint.

Nothing here names a benchmark: what differs between them (extractor, stop strings, side
metrics and their captions) is declared on :class:`scoreops.benchmarks.Benchmark`.
"""

from scoreops.evaluate.benchmark import BenchmarkResult, evaluate_benchmark
from scoreops.evaluate.generation import answer_extractor
from scoreops.evaluate.job import main
from scoreops.evaluate.loglik import loglikelihoods
from scoreops.evaluate.models import LoadedModel, load_eval_model, score_run_uri
from scoreops.evaluate.suite import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    evaluate_suite,
    run_evalsuite,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "BenchmarkResult",
    "LoadedModel",
    "answer_extractor",
    "evaluate_benchmark",
    "evaluate_suite",
    "load_eval_model",
    "loglikelihoods",
    "main",
    "run_evalsuite",
    "score_run_uri",
]
