"""The hf engine's fast decoding path: a static key/value cache, replayed as a CUDA graph.

``model.generate`` spends most of a small model's decoding step in Python and kernel launches
(on an H200, a 135M-parameter model at batch 256 took 85 ms a step with the chip nearly idle).
:class:`StaticDecoder` instead

* preallocates, per (rows, cache length) shape, every layer's keys and values ``[B, H, L, D]``
  and writes each step's states at a position held in a device tensor (``index_copy_``);
* passes the attention mask as a ready 4-D mask built from a per-row "written and real" bit
  per cache column, so transformers' mask construction (host-side checks) is skipped;
* samples inside the step with a counter-based generator: each row's uniform draw is a hash of
  its 63-bit row seed and the step number (integer arithmetic, the same on every device), so
  a row's tokens depend on its seed only, never on the batch it is decoded in;
* on CUDA captures one decoding step (forward, sampling, stop bookkeeping, position updates)
  as a CUDA graph and replays it, checking for finished rows every few steps only.

The prompt (or, with the prefix cache, the uncached tail of it) is one eager forward pass. On
the CPU the same loop runs eagerly (no graphs); the engine uses it there only when asked,
since transformers' own loop is as fast on a CPU.

Supported: decoder-only models whose layers are all full attention, with ``sdpa`` or
``eager`` attention (:func:`supports`). Others, stop strings, and models with forward hooks
(whose Python side a graph would freeze) take ``generate``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scoreops.rollout.sampling import seed_halves, top_p_filter, uniform_from_seeds
from scoreops.rollout.static_cache import Slot, cache_kwarg, supports

if TYPE_CHECKING:
    import torch

__all__ = ["DecodeResult", "StaticDecoder", "TooLarge", "supports"]

GRAPH_CHECK_EVERY = 8
"""Decoding steps between checks for "every row finished" (each check waits for the GPU)."""


class TooLarge(RuntimeError):
    """The static cache of a batch would not fit in the device's free memory."""


@dataclass
class DecodeResult:
    """Per row (the caller's rows, not the padding): generated token ids (through the first
    end-of-sequence token), their log-probs, and the key/value buffers with the number of
    generated tokens whose states they hold (``fed``)."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    stopped: list[bool]
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    fed: int


class StaticDecoder:
    """Greedy or sampled decoding of left-padded prompt rows on a static cache (see the module
    docstring). One instance per model; buffers are kept for the last ``max_slots`` shapes.

    Args:
        model: the causal LM (its parameters may change in place between calls: a graph reads
            them where they are).
        eos_token_ids, pad_token_id: stop tokens, and the token fed after a row stopped.
        cuda_graphs: capture and replay each decoding step (CUDA only; default: on CUDA).
    """

    def __init__(self, model: Any, eos_token_ids: Sequence[int], pad_token_id: int, *,
                 cuda_graphs: bool | None = None, max_slots: int = 4,
                 memory_fraction: float = 0.5) -> None:
        import torch

        reason = supports(model)
        if reason is not None:
            raise ValueError(f"static decoding does not support this model: {reason}")
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=self.device)
        self.pad = int(pad_token_id)
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else (
            cuda_graphs and self.device.type == "cuda")
        self.cache_kw = cache_kwarg(model)
        self.sdpa = (getattr(model.config, "_attn_implementation", None) or "eager") == "sdpa"
        self.keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.max_slots = max_slots
        self.memory_fraction = memory_fraction
        self._slots: OrderedDict[tuple[Any, ...], Slot] = OrderedDict()
        self.graph_failures: list[str] = []
        """Why a capture failed (decoding then ran eagerly); empty when graphs worked."""
        self.graphs_replayed = 0

    # -- shapes ------------------------------------------------------------------------------

    @staticmethod
    def bucket_rows(n: int) -> int:
        """Rows a batch of ``n`` is padded to (few shapes: few graphs)."""
        b = 8
        while b < n:
            b *= 2
        return b

    @staticmethod
    def bucket_length(n: int) -> int:
        return -(-n // 128) * 128

    def reserve(self, n: int, width: int, max_new_tokens: int,
                sampling: tuple[bool, float, float]) -> None:
        """Make room for a batch of ``n`` prompts of at most ``width`` tokens; raises
        :class:`TooLarge` if its static cache cannot fit."""
        self._slot(self.bucket_rows(n), self.bucket_length(width + max_new_tokens),
                   max_new_tokens, sampling)

    @staticmethod
    def sampling_key(greedy: bool, temperature: float, top_p: float) -> tuple[bool, float, float]:
        return (greedy, 1.0 if greedy else float(temperature), 1.0 if greedy else float(top_p))

    def cache_bytes(self, rows: int, length: int) -> int:
        cfg = self.model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        size = self.model.dtype.itemsize if hasattr(self.model, "dtype") else 4
        return 2 * cfg.num_hidden_layers * rows * length * heads * head_dim * size

    def _slot(self, rows: int, length: int, max_new: int,
              sampling: tuple[bool, float, float]) -> Slot:
        key = (rows, length, max_new, sampling)
        slot = self._slots.get(key)
        if slot is None:
            while len(self._slots) >= self.max_slots:
                self._slots.popitem(last=False)
            if self.device.type == "cuda":
                import torch

                need = self.cache_bytes(rows, length)
                if need > self.memory_fraction * torch.cuda.mem_get_info(self.device)[0]:
                    self._slots.clear()  # the other shapes' buffers go first
                    torch.cuda.empty_cache()
                    free = torch.cuda.mem_get_info(self.device)[0]
                    if need > self.memory_fraction * free:
                        raise TooLarge(f"a static cache of {rows} rows x {length} positions "
                                       f"needs {need / 2**30:.1f} GiB; {free / 2**30:.1f} GiB "
                                       "are free")
            slot = self._slots[key] = Slot(self.model, self.device, self.dtype, rows, length, max_new,
                                                  sampling)
        self._slots.move_to_end(key)
        return slot

    def clear(self) -> None:
        """Drop every buffer and graph."""
        self._slots.clear()

    # -- the model -----------------------------------------------------------------------------

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        import torch

        if self.sdpa:
            return allowed
        zero = torch.zeros((), dtype=self.dtype, device=allowed.device)
        low = torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, device=allowed.device)
        return torch.where(allowed, zero, low)

    def _forward(self, slot: Slot, cache: Any, ids: torch.Tensor, positions: torch.Tensor,
                 allowed: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V]`` of the last input position; writes the inputs' states."""
        kwargs: dict[str, Any] = {self.cache_kw or "past_key_values": cache, "use_cache": True}
        if self.keep_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, attention_mask=self._mask(allowed),
                         position_ids=positions, **kwargs)
        return out.logits[:, -1]

    def _sample(self, slot: Slot, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        greedy, temperature, top_p = slot.sampling
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        if greedy:
            tokens = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1.0:
                probs = top_p_filter(probs, top_p)
            cdf = probs.double().cumsum(dim=-1)
            u = uniform_from_seeds(slot.seed_lo, slot.seed_hi, slot.step)
            draws = (u * cdf[:, -1]).unsqueeze(-1)
            tokens = torch.searchsorted(cdf, draws, right=True).squeeze(-1)
            tokens = tokens.clamp(max=probs.shape[-1] - 1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)

    def _record(self, slot: Slot, tokens: torch.Tensor, logp: torch.Tensor) -> None:
        import torch

        tokens = torch.where(slot.finished, torch.full_like(tokens, self.pad), tokens)
        slot.out_tokens.index_copy_(1, slot.step, tokens[:, None])
        slot.out_logp.index_copy_(1, slot.step, logp[:, None].float())
        slot.finished |= torch.isin(tokens, self.eos)
        slot.tok.copy_(tokens)

    def _decode_step(self, slot: Slot, cache: Any) -> None:
        """Feed ``slot.tok`` at column ``slot.pos``, sample the next token (no host sync)."""
        slot.valid.index_fill_(1, slot.pos, True)
        allowed = slot.valid[:, None, None, :]
        logits = self._forward(slot, cache, slot.tok[:, None], slot.pos_ids, allowed)
        slot.step.add_(1)
        tokens, logp = self._sample(slot, logits)
        self._record(slot, tokens, logp)
        slot.pos.add_(1)
        slot.pos_ids.add_(1)

    # -- a batch -------------------------------------------------------------------------------

    def decode(self, prompts: list[list[int]], seeds: list[int], *, max_new_tokens: int,
               greedy: bool, temperature: float, top_p: float,
               prefix: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None]
               | None = None) -> DecodeResult:
        """Decode ``prompts`` (each row left-padded to the longest). ``prefix[i]``, when given,
        is ``(u, layers)``: the states of row i's first ``u`` prompt tokens (per layer keys and
        values ``[H, ≥u, D]``), which are then not recomputed."""
        n = len(prompts)
        width = max(len(p) for p in prompts)
        rows = self.bucket_rows(n)
        length = self.bucket_length(width + max_new_tokens)
        sampling = self.sampling_key(greedy, temperature, top_p)
        slot = self._slot(rows, length, max_new_tokens, sampling)
        cached = [0] * n if prefix is None else [0 if p is None else p[0] for p in prefix]
        # the cached span is left of every row's uncached tail (see HFEngine._cached_prefix)
        span = min(width - (len(p) - c) for p, c in zip(prompts, cached, strict=True))
        span = max(0, span)
        ids, real = self._left_padded(prompts, rows, width)
        with self._no_determinism():
            self._reset(slot, real, seeds, width)
            if prefix is not None and span > 0:
                _load_prefix(slot, prefix, [width - len(p) for p in prompts], span)
            cache = self._prefill(slot, ids, real, span)
            steps = self._decode_steps(slot, cache, n, max_new_tokens)
            out = slot.out_tokens[:n, :steps].tolist()
            lps = slot.out_logp[:n, :steps].tolist()
        eos = set(self.eos.tolist())
        tokens_out, logps_out, stopped = [], [], []
        for row, lp in zip(out, lps, strict=True):
            end = next((j for j, t in enumerate(row) if t in eos), -1)
            keep = end + 1 if end >= 0 else len(row)
            tokens_out.append(row[:keep])
            logps_out.append(lp[:keep])
            stopped.append(end >= 0)
        return DecodeResult(tokens_out, logps_out, stopped, slot.kv, steps - 1)

    def _left_padded(self, prompts: list[list[int]], rows: int,
                     width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, real)`` on the device: the prompts left-padded to ``width`` in ``rows``
        rows, and which columns hold prompt tokens (padding rows: one pad token each)."""
        import torch

        ids = torch.full((rows, width), self.pad, dtype=torch.long)
        real = torch.zeros((rows, width), dtype=torch.bool)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            real[i, width - len(p):] = True
        for i in range(len(prompts), rows):
            real[i, width - 1] = True
        return ids.to(self.device), real.to(self.device)

    def _reset(self, slot: Slot, real: torch.Tensor, seeds: list[int], width: int) -> None:
        """Clear ``slot``'s buffers for a new batch: its valid columns, per-row seeds, outputs."""
        import torch

        pad_rows = [0] * (slot.rows - len(seeds))
        lo = torch.tensor([seed_halves(s)[0] for s in seeds] + pad_rows, dtype=torch.long)
        hi = torch.tensor([seed_halves(s)[1] for s in seeds] + pad_rows, dtype=torch.long)
        slot.valid.zero_()
        slot.valid[:, :width] = real
        slot.finished.zero_()
        slot.out_tokens.fill_(self.pad)
        slot.out_logp.zero_()
        slot.seed_lo.copy_(lo)
        slot.seed_hi.copy_(hi)
        slot.step.zero_()

    def _prefill(self, slot: Slot, ids: torch.Tensor, real: torch.Tensor, span: int) -> Any:
        """Run the prompt columns from ``span`` on (column c of row b sees the real columns
        <= c, and itself) and sample the first token; the cache to decode on."""
        import torch

        width, dev = ids.shape[1], self.device
        slot.pos.fill_(span)
        cols = torch.arange(slot.length, device=dev)
        qpos = torch.arange(span, width, device=dev)
        causal = cols[None, :] <= qpos[:, None]
        allowed = (slot.valid[:, None, None, :] & causal[None, None]) | (
            cols[None, None, None, :] == qpos[None, None, :, None])
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        cache = slot.cache()
        logits = self._forward(slot, cache, ids[:, span:], positions[:, span:], allowed)
        tokens, logp = self._sample(slot, logits)
        self._record(slot, tokens, logp)
        slot.pos.fill_(width)
        slot.pos_ids.copy_(real.long().sum(-1, keepdim=True))
        return cache

    def _decode_steps(self, slot: Slot, cache: Any, n: int, max_new_tokens: int) -> int:
        """Decode after the prefill until ``max_new_tokens`` or every real row of ``n``
        finished (checked every :data:`GRAPH_CHECK_EVERY` steps), replaying a captured CUDA
        graph where it can; the number of tokens decoded, the prefill's included."""
        steps = 1
        graphed = self.cuda_graphs and max_new_tokens > 2
        while steps < max_new_tokens:
            if steps % GRAPH_CHECK_EVERY == 0 and bool(slot.finished[:n].all()):
                break
            if graphed and slot.graph is None:
                self._warm_up_step(slot, cache)  # a real step, on a side stream
                steps += 1
                graphed = self._capture(slot, cache)
                continue
            if graphed:
                slot.graph.replay()
                self.graphs_replayed += 1
            else:
                self._decode_step(slot, cache)
            steps += 1
        return steps

    def _capture(self, slot: Slot, cache: Any) -> bool:
        """Capture one decoding step of ``slot`` as a CUDA graph (its warm-up step ran just
        before, on the current stream); ``False`` (decode eagerly) if capture fails."""
        import torch

        graph = torch.cuda.CUDAGraph()
        snapshot = [t.clone() for t in (slot.pos, slot.step, slot.pos_ids, slot.tok,
                                        slot.finished, slot.valid)]
        try:
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(graph):
                self._decode_step(slot, cache)
        except Exception as exc:  # an op that syncs with the host cannot be captured
            self.graph_failures.append(f"{type(exc).__name__}: {exc}")
            self.cuda_graphs = False  # do not try again on every call
            with contextlib.suppress(Exception):
                torch.cuda.synchronize(self.device)
            # capture does not run kernels, but restore the step's inputs to be sure
            for t, s in zip((slot.pos, slot.step, slot.pos_ids, slot.tok, slot.finished,
                             slot.valid), snapshot, strict=True):
                t.copy_(s)
            return False
        slot.graph = graph  # capture recorded the step without running it
        return True

    def _warm_up_step(self, slot: Slot, cache: Any) -> None:
        import torch

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._decode_step(slot, cache)
        torch.cuda.current_stream(self.device).wait_stream(side)

    @contextlib.contextmanager
    def _no_determinism(self) -> Any:
        """Deterministic mode swaps ``index_copy_`` for a kernel that cannot be captured;
        decoding here is deterministic anyway (seeded per row, no atomics)."""
        import torch

        was = torch.are_deterministic_algorithms_enabled()
        warn = torch.is_deterministic_algorithms_warn_only_enabled()
        if was:
            torch.use_deterministic_algorithms(False)
        try:
            yield
        finally:
            if was:
                torch.use_deterministic_algorithms(True, warn_only=warn)


def _load_prefix(slot: Slot, prefix: Sequence[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]
                                                | None], pads: Sequence[int], span: int) -> None:
    """Copy each row's cached prompt states into ``slot``'s cache, right-aligned to end at
    column ``span`` (row i's prompt starts at column ``pads[i]``)."""
    for i, entry in enumerate(prefix):
        if entry is None:
            continue
        u, layers = entry
        used = min(u, span - pads[i])
        if used <= 0:
            continue
        for (k, v), (sk, sv) in zip(slot.kv, layers, strict=True):
            k[i, :, span - used:span] = sk[:, :used]
            v[i, :, span - used:span] = sv[:, :used]
