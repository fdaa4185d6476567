"""Pulling the final answer out of a model's free-form completion.

The GSM8K extractors reproduce lm-evaluation-harness exactly (same regular expressions, same
match selection), because the two disagree a lot on chat models and numbers are only
comparable with peers when both are reported:

* ``strict-match``: the number after ``#### `` (first occurrence), as in lm-eval's ``gsm8k``.
* ``flexible-extract``: the last number-looking token anywhere in the text.

:func:`extract_final_answer` is the general-purpose one used for rewards: ``\\boxed{}`` first,
then "the answer is X", then ``#### X``, then the last number.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

__all__ = [
    "GSM8K_FLEXIBLE_RE",
    "GSM8K_STRICT_RE",
    "extract_answer_tag",
    "extract_boxed",
    "extract_choice",
    "extract_final_answer",
    "extract_flexible",
    "extract_strict_gsm8k",
    "lm_eval_normalize",
    "normalize_number",
    "normalize_text",
]

# lm-eval tasks/gsm8k/gsm8k.yaml, filter_list: strict-match and flexible-extract.
GSM8K_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# lm-eval gsm8k exact_match: ignore_case, regexes_to_ignore.
_LM_EVAL_IGNORE = [re.compile(p) for p in (r",", r"\$", r"(?s).*#### ", r"\.$")]

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+?)\s*(?:\.\s|\.?$|\n)",
    re.IGNORECASE | re.MULTILINE,
)
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_HASH_RE = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_HASH_NUMBER_RE = re.compile(r"^\$?\s*(-?[\d,]*\.?\d+(?:/\d+)?)")


def _regex_filter(pattern: re.Pattern[str], text: str, group_select: int) -> str | None:
    """lm-eval's RegexFilter: findall, pick one match, first non-empty group, strip."""
    matches = pattern.findall(text)
    if not matches:
        return None
    match = matches[group_select]
    if isinstance(match, tuple):
        non_empty = [m for m in match if m]
        if not non_empty:
            return None
        match = non_empty[0]
    return match.strip()


def extract_strict_gsm8k(text: str) -> str | None:
    """The number after the first ``#### `` (lm-eval ``strict-match``), or None."""
    return _regex_filter(GSM8K_STRICT_RE, text, 0)


def extract_flexible(text: str) -> str | None:
    """The last number-looking token (lm-eval ``flexible-extract``), or None.

    Note the regex keeps ``$``, ``,`` and a trailing ``.`` ("$1,000." ); compare with
    :func:`lm_eval_normalize` or :func:`normalize_number`.
    """
    return _regex_filter(GSM8K_FLEXIBLE_RE, text, -1)


def lm_eval_normalize(text: str) -> str:
    """lm-eval's GSM8K ``exact_match`` normalisation: drop ``,`` ``$``, up to ``#### ``, a
    trailing ``.``; lower-case; strip."""
    for pattern in _LM_EVAL_IGNORE:
        text = pattern.sub("", text)
    return text.lower().strip()


def normalize_number(text: str | None) -> str | None:
    """Canonical decimal string of a number written in ``text``, or None if it is not one.

    Accepts thousands separators, a currency sign, a trailing period, a percent sign and
    surrounding ``$``/``\\boxed{}``/markdown: ``"$1,000.00"`` -> ``"1000"``, ``"-3.50"`` ->
    ``"-3.5"``, ``"0.0"`` -> ``"0"``. Simple fractions ``a/b`` are kept as ``a/b`` reduced
    only by sign normalisation; anything else returns None.
    """
    if text is None:
        return None
    s = text.strip()
    boxed = extract_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.strip().strip("*").strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("\u2212", "-").replace(" ", "")
    s = re.sub(r"\\?%$", "", s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        sign, num, den = m.groups()
        if int(den) == 0:
            return None
        return f"{sign}{int(num)}/{int(den)}" if int(num) else "0"
    if not re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", s):
        return None
    negative = s.startswith("-")
    body = s.lstrip("-")
    if "." in body:
        whole, frac = body.split(".", 1)
        frac = frac.rstrip("0")
        whole = whole.lstrip("0") or "0"
        body = f"{whole}.{frac}" if frac else whole
    else:
        body = body.lstrip("0") or "0"
    if body == "0":
        return "0"
    return f"-{body}" if negative else body


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included.

    ``\\boxed 5`` (the brace-less form) is accepted too. Returns None when there is none or
    the braces are unbalanced.
    """
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{|\s)", text)]
    for m in reversed(starts):
        if m.group(1) == "{":
            depth = 0
            begin = m.end()
            for i in range(begin - 1, len(text)):
                ch = text[i]
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        return text[begin:i].strip()
            continue  # unbalanced: try an earlier one
        rest = text[m.end():]
        token = re.match(r"[^\s$.,;]+", rest)
        if token:
            return token.group(0)
    return None


def extract_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` (reasoning-gym's convention), or None."""
    matches = _ANSWER_TAG_RE.findall(text)
    return matches[-1].strip() if matches else None


def _clean_final(ans: str) -> str:
    ans = ans.strip().strip("*").strip()
    if ans.startswith("$") and ans.endswith("$") and len(ans) >= 2:
        inner = ans.strip("$").strip()
        if inner:
            ans = inner
    return ans.rstrip(".").strip()


def extract_final_answer(text: str) -> str | None:
    """The final answer of a solution: last ``\\boxed{}``; else the last "the answer is X"
    (also "final answer: X"); else ``#### X``; else the last number. None if none of these.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    matches = _ANSWER_IS_RE.findall(text)
    for candidate in reversed(matches):
        cleaned = _clean_final(candidate)
        if cleaned:
            inner_boxed = extract_boxed(cleaned)
            return inner_boxed if inner_boxed is not None else cleaned
    hashes = _HASH_RE.findall(text)
    if hashes:
        last = _clean_final(hashes[-1])
        number = _HASH_NUMBER_RE.match(last)
        return number.group(1) if number else last
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return numbers[-1]
    return None


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation and quotes."""
    s = " ".join(text.lower().split())
    return s.strip(string.punctuation + " \"'`*")


def extract_choice(
    text: str, choices: Sequence[str], letters: str = string.ascii_uppercase
) -> int | None:
    """Index of the option a completion picks, or None if it names none unambiguously.

    Recognised, in order: "the answer is (B)" / "answer: B" (last occurrence), ``\\boxed{B}``,
    a reply that is just the letter ("B", "(B)", "B.", "B) text"), a reply starting with
    "(B)" or "B.", exactly one distinct "(B)" in the text, then the option text itself (the
    whole reply equal to an option, or exactly one option quoted in the reply).
    """
    n = len(choices)
    if n == 0:
        return None
    valid = letters[:n]
    cls = "[" + re.escape(valid) + "]"

    def idx(letter: str) -> int | None:
        letter = letter.upper()
        return valid.index(letter) if letter in valid else None

    stripped = text.strip()
    answer_is = re.findall(
        rf"answer\s*(?:is|:)?\s*(?:option\s*)?[:\s]*\(?\*{{0,2}}({cls})\*{{0,2}}\)?(?![A-Za-z0-9])",
        stripped,
        flags=re.IGNORECASE,
    )
    # upper-case letters only: "answer is a ..." is more often an article than option (a)
    answer_is = [a for a in answer_is if a.isupper()]
    if answer_is:
        return idx(answer_is[-1])
    boxed = extract_boxed(stripped)
    if boxed is not None:
        m = re.fullmatch(rf"\(?(?:\\text\{{)?\(?({cls})\)?\}}?\)?", boxed.strip())
        if m:
            return idx(m.group(1))
    m = re.fullmatch(rf"\(?({cls})\)?[.:)]?", stripped)
    if m:
        return idx(m.group(1))
    m = re.match(rf"\(({cls})\)|({cls})[.):](?:\s|$)", stripped)
    if m:
        return idx(m.group(1) or m.group(2))
    paren = set(re.findall(rf"\(({cls})\)", stripped))
    if len(paren) == 1:
        return idx(paren.pop())
    norm = normalize_text(stripped)
    norm_choices = [normalize_text(c) for c in choices]
    if norm in norm_choices and norm_choices.count(norm) == 1:
        return norm_choices.index(norm)
    found = [
        i for i, c in enumerate(norm_choices)
        if c and re.search(rf"(?<![a-z0-9]){re.escape(c)}(?![a-z0-9])", norm)
    ]
    # an option that is a substring of another found option does not count on its own
    found = [i for i in found if not any(j != i and norm_choices[i] in norm_choices[j]
                                         for j in found)]
    if len(found) == 1:
        return found[0]
    return None
