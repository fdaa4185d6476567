"""The benchmarks, as data: one :class:`Benchmark` declaration each - prompt, scoring,
answer extraction, side metrics, sources, expected size.

Like lm-evaluation-harness's task files (GSM8K's ``filter_list``), every fact the evaluator
needs about a benchmark is a field here, so no other module asks for a benchmark by name.
The functions the declarations name live beside their family: :mod:`.mathematics`,
:mod:`.choice`, :mod:`.bbh`. :mod:`scoreops.benchmarks.registry` looks them up by name.

Prompts are chat turns. Few-shot examples become earlier user/assistant turns (the
multi-turn few-shot format), so the same prompt works for a base model behind a chat
template and for an OpenAI-compatible endpoint.
"""

from __future__ import annotations

from scoreops.benchmarks import choice, mathematics, offline
from scoreops.benchmarks.base import Benchmark
from scoreops.benchmarks.bbh import (
    BBH_TASK_SIZES,
    BBH_TASKS,
    bbh_answer,
    bbh_assistant,
    bbh_boolean_raw,
    bbh_raw,
    bbh_user,
    generate_boolean_expressions,
    generate_boolean_items,
    score_bbh,
)

__all__ = ["BENCHMARKS"]

GSM8K = Benchmark(
    name="gsm8k",
    description="GSM8K grade-school math, test split (1,319); strict and flexible match",
    kind="generative-math",
    expected_size=1319,
    render_user=mathematics.gsm8k_user,
    render_assistant=mathematics.gsm8k_assistant,
    scorer=mathematics.score_gsm8k,
    verifier="gsm8k-flexible",
    extract=mathematics.extract_gsm8k,
    offline_source=offline.gsm8k,
    from_raw=mathematics.gsm8k_raw,
    side_metrics=dict(mathematics.GSM8K_SIDE_METRICS),
)

MATH500 = Benchmark(
    name="math500",
    description="MATH-500 competition math subset (500); math-verify equivalence",
    kind="generative-math",
    expected_size=500,
    render_user=mathematics.math_user,
    render_assistant=mathematics.math_assistant,
    scorer=mathematics.score_math,
    verifier="math",
    extract=mathematics.extract_math,
    offline_source=offline.math500,
    from_raw=mathematics.math_raw,
)

MATH = Benchmark(
    name="math",
    description="MATH competition math, full test split (5,000; 7 subjects)",
    kind="generative-math",
    expected_size=5000,
    render_user=mathematics.math_user,
    render_assistant=mathematics.math_assistant,
    scorer=mathematics.score_math,
    verifier="math",
    extract=mathematics.extract_math,
    subjects=offline.MATH_SUBJECTS,
    offline_source=offline.math_full,
    from_raw=mathematics.math_raw,
)

MMLU = Benchmark(
    name="mmlu",
    description="MMLU, 57 subjects, test split (14,042); 5-shot from dev",
    kind="multiple-choice",
    expected_size=14042,
    render_user=choice.mmlu_user,
    render_assistant=choice.mc_assistant,
    scorer=choice.score_choice,
    verifier="choice",
    extract=choice.extract_letter,
    subjects=choice.MMLU_SUBJECTS,
    offline_source=offline.mmlu,
    from_raw=choice.mmlu_raw,
    fewshot_splits=("dev",),
    ll_context=choice.mmlu_ll_context,
    ll_choices=choice.mmlu_ll_choices,
    ll_description=choice.mmlu_ll_description,
)

ARC_CHALLENGE = Benchmark(
    name="arc_challenge",
    description="ARC-Challenge science questions, test split (1,172)",
    kind="multiple-choice",
    expected_size=1172,
    render_user=choice.arc_user,
    render_assistant=choice.mc_assistant,
    scorer=choice.score_choice,
    verifier="choice",
    extract=choice.extract_letter,
    offline_source=offline.arc_challenge,
    from_raw=choice.arc_raw,
    fewshot_splits=("train",),
    ll_context=choice.arc_ll_context,
    ll_choices=choice.choice_texts,
)

HELLASWAG = Benchmark(
    name="hellaswag",
    description="HellaSwag commonsense completion, validation split (10,042)",
    kind="multiple-choice",
    expected_size=10042,
    render_user=choice.hellaswag_user,
    render_assistant=choice.mc_assistant,
    scorer=choice.score_choice,
    verifier="choice",
    extract=choice.extract_letter,
    offline_source=offline.hellaswag,
    from_raw=choice.hellaswag_raw,
    test_splits=("validation", "val"),
    fewshot_splits=("train",),
    ll_context=choice.hellaswag_ll_context,
    ll_choices=choice.choice_texts,
)

BBH = Benchmark(
    name="bbh",
    description="BIG-Bench Hard, 27 tasks (6,511); imported from the BBH JSON files",
    kind="generative-text",
    expected_size=sum(BBH_TASK_SIZES.values()),
    render_user=bbh_user,
    render_assistant=bbh_assistant,
    scorer=score_bbh,
    verifier="exact",
    extract=bbh_answer,
    subjects=BBH_TASKS,
    subject_field="task",
    subject_sizes=dict(BBH_TASK_SIZES),
    from_raw=bbh_raw,
    fewshot_splits=("cot", "fewshot"),
)

BBH_BOOLEAN_EXPRESSIONS = Benchmark(
    name="bbh_boolean_expressions",
    description="BBH boolean_expressions (250): BBH files, or generated from its grammar",
    kind="generative-text",
    expected_size=BBH_TASK_SIZES["boolean_expressions"],
    render_user=bbh_user,
    render_assistant=bbh_assistant,
    scorer=score_bbh,
    verifier="exact",
    extract=bbh_answer,
    subject_field="task",
    from_raw=bbh_boolean_raw,
    fewshot_splits=("cot", "fewshot"),
    generator=generate_boolean_items,
    generator_size=BBH_TASK_SIZES["boolean_expressions"],
    # generated with a seed the test set (seed 0) does not use
    builtin_fewshot=tuple(
        {**row, "id": f"bbh_boolean_expressions-fewshot-{i}"}
        for i, row in enumerate(generate_boolean_expressions(3, seed=1_000_003))
    ),
)

SINGLE_DIGIT_ADDITION = Benchmark(
    name="single-digit-addition",
    description="a + b with one-digit operands (generated; the CPU demo task)",
    kind="generative-math",
    expected_size=None,
    render_user=mathematics.plain_user,
    render_assistant=mathematics.plain_assistant,
    scorer=mathematics.score_number,
    verifier="math",
    extract=mathematics.extract_math,
    from_raw=mathematics.addition_raw,
    generator=mathematics.generate_addition,
    generator_size=100,
    builtin_fewshot=tuple(
        {"id": f"single-digit-addition-fewshot-{i}", "question": q, "answer": a}
        for i, (q, a) in enumerate([
            ("What is 2 + 3? Answer with only the number.", "5"),
            ("What is 7 + 6? Answer with only the number.", "13"),
            ("What is 0 + 4? Answer with only the number.", "4"),
        ])
    ),
)

#: every benchmark, in registration order
BENCHMARKS: tuple[Benchmark, ...] = (
    GSM8K, MATH500, MATH, MMLU, ARC_CHALLENGE, HELLASWAG, BBH, BBH_BOOLEAN_EXPRESSIONS,
    SINGLE_DIGIT_ADDITION,
)
