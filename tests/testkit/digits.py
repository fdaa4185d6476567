"""A learnable toy for training tests: a tiny model that always answers with one digit.

``build_digit_model`` gives a tiny random Llama whose next token is (almost always) a digit
in any context, each digit equally likely unless ``favour`` says otherwise — right one time in
ten by chance on :func:`write_answer_items`' questions, whose answer is always the same digit.
A reward for that digit is learnable in a few RL steps, which is what tests assert.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from testkit.tiny import build_tiny_model

DIGITS = [str(d) for d in range(10)]


def build_digit_model(out: str | Path, *, favour: dict[str, float] | None = None,
                      weight: float = 3.0, head_dim: int | None = None) -> Path:
    """Tiny Llama whose next token is a digit for any context.

    A constant coordinate (10.0 in dimension 0 of every token embedding) dominates the
    residual stream (attention and MLP outputs are scaled by 0.01), so after the final norm
    dimension 0 is ≈ 4 everywhere; the head's column 0 is ``weight`` for the digit rows
    (``favour[d]`` for digit d when given) and 0 elsewhere. ``head_dim``: see
    :func:`~testkit.tiny.build_tiny_model` (32 for vLLM on CPU).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    d = build_tiny_model(out, seed=0, head_dim=head_dim)
    tok = AutoTokenizer.from_pretrained(d)
    cfg = AutoConfig.from_pretrained(d)
    cfg.tie_word_embeddings = False
    tied = AutoModelForCausalLM.from_pretrained(d)
    model = AutoModelForCausalLM.from_config(cfg)
    state = tied.state_dict()
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    model.load_state_dict(state)
    digit_ids = [tok.convert_tokens_to_ids(x) for x in DIGITS]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.01)
            layer.mlp.down_proj.weight.mul_(0.01)
        model.lm_head.weight[:, 0] = 0.0
        for digit, tid in zip(DIGITS, digit_ids, strict=True):
            model.lm_head.weight[tid, 0] = (favour or {}).get(digit, weight)
    model.save_pretrained(d)
    return d


def write_answer_items(path: str | Path, n: int, answer: str = "7") -> Path:
    """``n`` distinct JSONL questions "Question i: what is a + b?" whose answer is ``answer``."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a = rng.randint(0, int(answer))
        rows.append({"id": f"q{i}", "question": f"Question {i}: what is {a} + {int(answer) - a}?",
                     "answer": answer, "source": "test"})
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scorerun_doc(spec: dict[str, Any], name: str = "t", **over: Any) -> dict[str, Any]:
    """A ScoreRun resource around ``spec``, with dotted-path overrides applied
    (``**{"optim.learningRate": 0.01}``)."""
    for path, value in over.items():
        node = spec
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return {"apiVersion": "scoreops.io/v1alpha1", "kind": "ScoreRun",
            "metadata": {"name": name}, "spec": spec}
