"""How much context and KV cache a vLLM rollout engine gets (pure sizing; no vllm import).

* :func:`derive_max_model_len` — the context one episode needs: longest prompt + turns × max
  new tokens + the correction instruction's tokens between turns;
* :func:`kv_cache_bytes`, :func:`cpu_kv_budget` — the KV cache for a number of full-length
  sequences (on CPU, where vLLM's memory share is one of host RAM, the cache is sized so);
* :func:`check_cpu_head_dim` — the head sizes vLLM's CPU attention implements.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from scoreops.rollout.chat import continuation_ids, encode_conversation
from scoreops.rollout.types import Conversation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["CPU_HEAD_SIZES", "DEFAULT_KV_SEQUENCES", "check_cpu_head_dim", "cpu_kv_budget",
           "derive_max_model_len", "kv_cache_bytes"]

log = logging.getLogger("scoreops.rollout.vllm")

#: sequences whose full context the CPU KV cache holds at once (more requests queue)
DEFAULT_KV_SEQUENCES = 16


def derive_max_model_len(
    tokenizer: PreTrainedTokenizerBase,
    questions: Iterable[str],
    *,
    turns: int,
    max_new_tokens: int,
    instruction: str,
    system_prompt: str | None = None,
    model_max: int | None = None,
) -> int:
    """Context one episode needs: the longest turn-1 prompt + ``turns`` × ``max_new_tokens`` +
    ``turns - 1`` times the tokens the chat template puts between an answer and the next
    generation prompt (end of turn, the instruction, the assistant header).

    Capped at ``model_max`` (the model's own context), where given.
    """
    longest = 0
    history: Conversation = []
    for q in questions:
        conv: Conversation = [{"role": "system", "content": system_prompt}] if system_prompt \
            else []
        conv.append({"role": "user", "content": q})
        n = len(encode_conversation(tokenizer, conv))
        if n > longest:
            longest, history = n, conv
    if not history:
        raise ValueError("no questions to size the context from")
    base = encode_conversation(tokenizer, history)
    # the tail after an answer cut by the length limit (the end-of-turn token is added)
    tail = len(continuation_ids(tokenizer, history, base, [],
                                [{"role": "user", "content": instruction}])) - len(base)
    need = longest + turns * max_new_tokens + (turns - 1) * tail
    if model_max is not None and need > model_max:
        log.warning("an episode can need %d tokens (longest prompt %d + %d turns x %d new "
                    "tokens); the model's context is %d, so long episodes will be cut",
                    need, longest, turns, max_new_tokens, model_max)
        return int(model_max)
    return int(need)


def kv_cache_bytes(hf_config: Any, max_model_len: int, dtype: str,
                   sequences: int = DEFAULT_KV_SEQUENCES) -> int:
    """Bytes of KV cache for ``sequences`` sequences of ``max_model_len`` tokens (keys and
    values of every layer)."""
    import torch

    cfg = getattr(hf_config, "text_config", None) or hf_config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = _head_dim(hf_config)
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * itemsize
    return int(per_token * max_model_len * max(1, sequences))


#: head sizes vLLM's CPU attention kernels implement (vllm/v1/attention/backends/cpu_attn.py)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _head_dim(hf_config: Any) -> int:
    cfg = getattr(hf_config, "text_config", None) or hf_config
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def check_cpu_head_dim(hf_config: Any, path: str) -> None:
    """Refuse a model whose attention head size vLLM's CPU kernels do not implement."""
    if _head_dim(hf_config) not in CPU_HEAD_SIZES:
        raise ValueError(
            f"{path}: attention head size {_head_dim(hf_config)} is not one vLLM's CPU kernels "
            f"implement ({', '.join(map(str, CPU_HEAD_SIZES))}); use engine hf for this model")


def cpu_kv_budget(hf_config: Any, max_model_len: int, dtype: str, sequences: int) -> int:
    """KV bytes for ``sequences`` full-length sequences, but no more than a quarter of the
    host's available memory (and never less than one sequence: vLLM refuses that)."""
    one = kv_cache_bytes(hf_config, max_model_len, dtype, 1)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(one, min(one * max(1, sequences), available // 4))
