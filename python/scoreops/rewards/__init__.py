"""Verifiers and answer extraction: is a completion's final answer right?

Light to import: math-verify (sympy) and reasoning-gym load on first use.
"""

from scoreops.rewards.equivalence import math_equal, math_equal_cache_info
from scoreops.rewards.extract import (
    extract_answer_tag,
    extract_boxed,
    extract_choice,
    extract_final_answer,
    extract_flexible,
    extract_strict_gsm8k,
    lm_eval_normalize,
    normalize_number,
    normalize_text,
)
from scoreops.rewards.verifiers import (
    VERIFIER_KINDS,
    ChoiceVerifier,
    ExactVerifier,
    Gsm8kVerifier,
    MathVerifier,
    ReasoningGymVerifier,
    Verifier,
    VerifierKind,
    auto_verifier_kind,
    gold_index,
    item_field,
    make_verifier,
)

__all__ = [
    "VERIFIER_KINDS",
    "ChoiceVerifier",
    "ExactVerifier",
    "Gsm8kVerifier",
    "MathVerifier",
    "ReasoningGymVerifier",
    "Verifier",
    "VerifierKind",
    "auto_verifier_kind",
    "extract_answer_tag",
    "extract_boxed",
    "extract_choice",
    "extract_final_answer",
    "extract_flexible",
    "extract_strict_gsm8k",
    "gold_index",
    "item_field",
    "lm_eval_normalize",
    "make_verifier",
    "math_equal",
    "math_equal_cache_info",
    "normalize_number",
    "normalize_text",
]
