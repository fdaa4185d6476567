"""Log-likelihood scoring, lm-evaluation-harness's ``loglikelihood``: the sum of log p of a
continuation given its context, with the options of one question packed into one row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["loglikelihoods"]

Encoded = list[tuple[list[int], list[int]]]
#: a context's token ids and the indices of the requests that share it
Group = tuple[tuple[int, ...], list[int]]


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
    shared, alone = _group_by_context(encoded, limit)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
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


def _group_by_context(encoded: Encoded, limit: int) -> tuple[list[Group], list[int]]:
    """Requests grouped by context, longest group first (padding stays small and an
    out-of-memory error shows on the first batch), and the requests of groups too long to
    pack within ``limit`` tokens."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(encoded):
        groups.setdefault(tuple(ctx), []).append(i)
    shared: list[Group] = []
    alone: list[int] = []
    for ctx, members in groups.items():
        if len(ctx) + max(len(encoded[i][1]) for i in members) - 1 > limit:
            alone.extend(members)
        else:
            shared.append((ctx, members))
    shared.sort(key=lambda g: -len(g[0]) - sum(len(encoded[i][1]) - 1 for i in g[1]))
    return shared, alone


def _score_span(logprobs: Any, target: list[int]) -> tuple[float, bool]:
    import torch

    index = torch.tensor(target, dtype=torch.long, device=logprobs.device)
    total = float(logprobs.gather(-1, index[:, None]).sum())
    return total, bool((logprobs.argmax(-1) == index).all())


def _pack_rows(
    groups: list[Group], encoded: Encoded,
) -> tuple[list[list[int]], list[list[int]], list[list[tuple[int, int, int]]]]:
    """Per context: its row of tokens (the context, then every continuation but its last
    token), the position ids (restarting after the context for each branch), and the
    branches as (request, first column, length)."""
    rows: list[list[int]] = []
    positions: list[list[int]] = []
    branches: list[list[tuple[int, int, int]]] = []
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
    return rows, positions, branches


def _tree_inputs(
    groups: list[Group], rows: list[list[int]], positions: list[list[int]],
    branches: list[list[tuple[int, int, int]]], pad: int, dtype: Any,
) -> tuple[Any, Any, Any]:
    """Left-padded input ids, position ids and the additive 4-D mask in which each branch
    sees the context and itself but not its siblings."""
    import torch

    width = max(len(r) for r in rows)
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
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return ids, pos_ids, mask


def _packed_batch(
    model: Any, groups: list[Group], encoded: Encoded, results: list[tuple[float, bool]],
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

    rows, positions, branches = _pack_rows(groups, encoded)
    width = max(len(r) for r in rows)
    keep = max(len(r) - len(ctx) + 1 for r, (ctx, _) in zip(rows, groups, strict=True))
    ids, pos_ids, mask = _tree_inputs(groups, rows, positions, branches, pad,
                                      next(model.parameters()).dtype)
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
    model: Any, indices: list[int], encoded: Encoded, results: list[tuple[float, bool]],
    pad: int, device: Any, limit: int, batch_size: int,
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
