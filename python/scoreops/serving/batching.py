"""How rows share the decode loop's batch: their joint prefill, and the batch cache.

**The batch cache** is LEFT-aligned per row: row ``i``'s ``n_i`` fed tokens occupy the last
``n_i`` columns, the columns before them are masked out (:func:`left_aligned_mask`), and
:func:`batch_states` re-lays the states whenever rows join or leave.

**Joint prefill.**

Rows that join between two decoding steps (new requests' prompts, and later turns whose
earlier turn's key/value states are in the prefix cache) are grouped, and each group is run
through the model in one forward. On a CPU one forward over a dozen prompts costs about half
of a dozen forwards over one; on a GPU it is the difference between a batch and a queue.

Each row has a *tail*: the prompt tokens its cached states do not cover (all of them without
an entry). A group runs every row's last ``T`` prompt tokens, ``T`` being the group's longest
tail: a row whose tail is shorter recomputes ``T - tail`` of its cached tokens rather than
leaving a gap, so every row's states stay contiguous in the batch cache (what
:class:`scoreops.serving.decode.DecodeLoop` assumes), and only a fresh prompt shorter than
``T`` is left-padded (masked out). Rows are grouped by tail length so that this recomputation
stays under half a group's work, within a token budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from scoreops.rollout.prefix_cache import CachedRow, PrefixCache
    from scoreops.serving.decode import Row

__all__ = ["JointInputs", "batch_states", "joint_inputs", "left_aligned_mask", "plan_groups"]

Group = list[tuple["Row", "CachedRow | None"]]


def plan_groups(rows: list[Row], prefix_cache: PrefixCache, budget: int
                ) -> tuple[list[Group], list[Row]]:
    """``rows`` with their prefix-cache entries, in groups prefilled by one forward each, and
    the rows with an empty prompt (which cannot be prefilled).

    Longest tails first; a group takes rows while their tail is at least half its first
    row's and rows × that tail stays within ``budget`` tokens.
    """
    found = []
    empty = []
    for row in rows:
        if not row.prompt:
            empty.append(row)
            continue
        cached = prefix_cache.lookup(row.prompt)
        found.append((row, cached, len(row.prompt) - (len(cached.tokens) if cached else 0)))
    found.sort(key=lambda f: -f[2])
    groups: list[Group] = []
    longest = 0
    for row, cached, tail in found:
        if (not groups or 2 * tail < longest
                or (len(groups[-1]) + 1) * longest > budget):
            groups.append([])
            longest = tail
        groups[-1].append((row, cached))
    return groups, empty


@dataclass
class JointInputs:
    """One group's forward: ``ids``/``positions`` ``[rows, T]``, ``mask`` over the cache's
    columns and the new ones, the cache holding the kept states, and per row how many of its
    cached tokens it kept."""

    ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    cache: Any
    keep: list[int]


def _kept_states(group: Group, keep: list[int], width: int) -> list[tuple[Any, Any]] | None:
    """Per layer, the rows' kept cached states right-aligned in ``width`` columns."""
    if not width:
        return None
    reference = next(c.layers for _, c in group if c is not None)
    data = []
    for layer, (k_ref, v_ref) in enumerate(reference):
        keys = k_ref.new_zeros((len(group), k_ref.shape[0], width, k_ref.shape[2]))
        values = v_ref.new_zeros((len(group), v_ref.shape[0], width, v_ref.shape[2]))
        for i, ((_, cached), k) in enumerate(zip(group, keep, strict=True)):
            if k and cached is not None:
                keys[i, :, width - k:] = cached.layers[layer][0][:, :k]
                values[i, :, width - k:] = cached.layers[layer][1][:, :k]
        data.append((keys, values))
    return data


def joint_inputs(group: Group, config: Any, pad: int, device: Any) -> JointInputs:
    """The inputs of ``group``'s joint prefill (see the module docstring).

    Row ``i`` keeps ``k_i = len(prompt) - T`` tokens of its cached states (none without an
    entry) and feeds its last ``T`` prompt tokens, or its whole prompt left-padded to ``T``.
    """
    import torch

    from scoreops.rollout.kv_cache import make_cache

    longest = max(len(r.prompt) - (len(c.tokens) if c else 0) for r, c in group)
    keep = [max(0, len(r.prompt) - longest) for r, _ in group]
    width = max(keep)
    # room for the fed tokens after the kept states; the rows' later tokens go to the batch
    # cache, which the loop rebuilds from these states
    cache = make_cache(config, longest, _kept_states(group, keep, width))
    n = len(group)
    ids = torch.full((n, longest), pad, dtype=torch.long, device=device)
    positions = torch.zeros((n, longest), dtype=torch.long, device=device)
    mask = torch.zeros((n, width + longest), dtype=torch.long, device=device)
    for i, ((row, _), k) in enumerate(zip(group, keep, strict=True)):
        fed = row.prompt[k:]
        ids[i, longest - len(fed):] = torch.tensor(fed, dtype=torch.long)
        positions[i, longest - len(fed):] = torch.arange(k, len(row.prompt))
        mask[i, width - k:width] = 1  # the kept cached states
        mask[i, width + longest - len(fed):] = 1  # the fed tokens, not the padding
    return JointInputs(ids=ids, positions=positions, mask=mask, cache=cache, keep=keep)


def batch_states(old: Any, keep: list[int], joins: list[tuple[Row, list[tuple[Any, Any]]]],
                 rows: list[Row], device: Any) -> list[tuple[Any, Any]]:
    """Per layer ``(keys, values)`` of the new batch: rows ``keep`` of the ``old`` cache
    layers, then the joining rows' own states, each right-aligned in the widest row's
    ``fed`` columns (common left padding trimmed)."""
    import torch

    width = max(r.fed for r in rows)
    old_width = old[0].keys.shape[2] if old else 0
    idx = torch.tensor(keep, dtype=torch.long, device=device) if keep else None
    data = []
    for layer in range(len(joins[0][1]) if joins else len(old)):
        ref = joins[0][1][layer][0] if joins else old[layer].keys
        vref = joins[0][1][layer][1] if joins else old[layer].values
        keys = ref.new_zeros((len(rows), ref.shape[1], width, ref.shape[3]))
        values = vref.new_zeros((len(rows), vref.shape[1], width, vref.shape[3]))
        if old:
            take = min(old_width, width)
            keys[: len(keep), :, width - take:] = old[layer].keys[idx, :, old_width - take:]
            values[: len(keep), :, width - take:] = old[layer].values[idx, :, old_width - take:]
        for j, (row, layers) in enumerate(joins):
            k, v = layers[layer]
            at = len(keep) + j
            keys[at, :, width - row.fed:] = k[0, :, k.shape[2] - row.fed:]
            values[at, :, width - row.fed:] = v[0, :, v.shape[2] - row.fed:]
        data.append((keys, values))
    return data


def left_aligned_mask(fed: list[int], device: Any) -> torch.Tensor:
    """The attention mask of a left-aligned batch: row ``i``'s last ``fed[i]`` columns."""
    import torch

    width = max(fed)
    mask = torch.zeros((len(fed), width), dtype=torch.long, device=device)
    for i, n in enumerate(fed):
        mask[i, width - n:] = 1
    return mask
