"""Per-row seeded sampling: every row of a batch draws from its own seed, so a sample does not
depend on the batch it is generated in (the HF engine's ``generate`` path and the static
decoder agree with each other and with themselves across batch sizes).

* :func:`row_seed` — the seed of one sample of one conversation;
* :func:`uniform_from_seeds` — counter-based draws on the GPU (the static decoder);
* :class:`RowSampler`, :class:`RowStopper` — ``generate``'s logits processor and stopping
  criterion with per-row generators and stop strings;
* :func:`sample_token` — one row's draw (the serving decode loop);
* :func:`top_p_filter` — nucleus filtering, shared by all paths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from scoreops.rollout.types import SamplingParams

__all__ = ["RowSampler", "RowStopper", "row_seed", "sample_token", "seed_halves",
           "top_p_filter", "uniform_from_seeds"]

_M32 = 0xFFFFFFFF


def row_seed(seed: int, conversation: int, sample: int) -> int:
    """A 63-bit seed for one row, stable across processes and platforms."""
    digest = hashlib.blake2b(f"{seed}:{conversation}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)



def seed_halves(seed: int) -> tuple[int, int]:
    """The low and high 32 bits of a row seed, as :func:`uniform_from_seeds` takes them."""
    return seed & _M32, (seed >> 32) & _M32


def _mul32(h: torch.Tensor, m: int) -> torch.Tensor:
    """``(h * m) mod 2**32`` for int64 tensors holding values below 2**32, without overflow."""
    lo, hi = m & 0xFFFF, m >> 16
    return (h * lo + (((h * hi) & 0xFFFF) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser (a bijection with full avalanche)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def uniform_from_seeds(seed_lo: torch.Tensor, seed_hi: torch.Tensor,
                       step: torch.Tensor) -> torch.Tensor:
    """One float64 draw in [0, 1) per row from its seed halves (int64, < 2**32) and ``step``
    (int64 ``[1]``): 53 random bits from hashing (seed, step)."""
    s = _fmix32((step * 0x9E3779B9 & _M32) ^ 0x1B873593)
    h = _fmix32(seed_lo ^ _fmix32(seed_hi ^ s))
    a = _fmix32(h ^ 0x68E31DA4) >> 5  # 27 bits
    b = _fmix32(h ^ 0x2545F491) >> 6  # 26 bits
    return (a * 67108864 + b).double() / 9007199254740992.0



class RowSampler:
    """Logits processor that samples each row from its own generator.

    It records ``log_softmax(raw logits)[token]`` and returns scores that are 0 at the chosen
    token and −inf elsewhere, so ``generate``'s greedy selection takes the chosen token.
    """

    def __init__(self, seeds: list[int], params: SamplingParams, device: Any) -> None:
        import torch

        self.params = params
        self.logprobs: list[torch.Tensor] = []
        self.generators = []
        if not params.greedy:
            dev = torch.device(device)
            for seed in seeds:
                g = torch.Generator(device=dev)
                g.manual_seed(seed)
                self.generators.append(g)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        logits = scores.float()
        logp = torch.log_softmax(logits, dim=-1)
        if self.params.greedy:
            tokens = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / self.params.temperature, dim=-1)
            if self.params.top_p < 1.0:
                probs = top_p_filter(probs, self.params.top_p)
            # Inverse-CDF sampling with one uniform draw per row from the row's own generator
            # (torch.multinomial has no per-row generators and is slow on large vocabularies).
            # ``right=True`` picks the first token whose cumulative mass exceeds the draw, so
            # a zero-probability token is never chosen.
            cdf = probs.double().cumsum(dim=-1)
            u = torch.cat(
                [torch.rand(1, generator=g, dtype=torch.float64, device=g.device)
                 for g in self.generators]
            )
            draws = (u * cdf[:, -1]).unsqueeze(-1)
            tokens = torch.searchsorted(cdf, draws, right=True).squeeze(-1)
            tokens = tokens.clamp(max=probs.shape[-1] - 1)
        self.logprobs.append(logp.gather(-1, tokens[:, None]).squeeze(-1))
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, tokens[:, None], 0.0)
        return out


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
                 ) -> int:
    """One row's draw from its ``[vocab]`` logits, as :class:`RowSampler` draws each row:
    temperature, then top-p, then one uniform from ``generator`` through the inverse CDF."""
    import torch

    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        probs = top_p_filter(probs[None], params.top_p)[0]
    cdf = probs.double().cumsum(-1)
    u = torch.rand(1, generator=generator, dtype=torch.float64, device=generator.device)
    token = int(torch.searchsorted(cdf, u * cdf[-1], right=True).item())
    return min(token, probs.shape[-1] - 1)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``; renormalise."""
    import torch

    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the strictly likelier tokens
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


class RowStopper:
    """Stopping criterion that remembers at which generated position each row stopped."""

    def __init__(
        self, prompt_width: int, eos_ids: set[int], stop: Sequence[str], tokenizer: Any
    ) -> None:
        self.prompt_width = prompt_width
        self.eos_ids = sorted(eos_ids)
        self.stop = tuple(stop)
        self.tokenizer = tokenizer
        # Byte-level tokens can carry less than a character: look back generously.
        self.window = 2 * max((len(s) for s in self.stop), default=0) + 4
        self.finished_at: list[int] = []

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        if not self.finished_at:
            self.finished_at = [-1] * input_ids.shape[0]
        step = input_ids.shape[1] - self.prompt_width - 1
        eos = torch.isin(input_ids[:, -1], torch.tensor(self.eos_ids, device=input_ids.device))
        hits = eos.tolist()
        if self.stop:
            lo = max(self.prompt_width, input_ids.shape[1] - self.window)
            tails = input_ids[:, lo:].tolist()
            for i, tail in enumerate(tails):
                if self.finished_at[i] < 0 and not hits[i]:
                    text = self.tokenizer.decode(tail, skip_special_tokens=False)
                    hits[i] = any(s in text for s in self.stop)
        for i, hit in enumerate(hits):
            if hit and self.finished_at[i] < 0:
                self.finished_at[i] = step
        done = [f >= 0 for f in self.finished_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
