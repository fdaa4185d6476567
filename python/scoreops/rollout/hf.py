"""A rollout engine on transformers' ``generate`` (CPU, or GPU without vLLM).

What it does per call:

* tokenizes each conversation with the chat template (or takes the caller's
  ``prompt_token_ids`` verbatim — how turn 2 reuses turn 1's tokens without re-tokenizing);
* repeats each prompt ``n`` times, sorts the rows by prompt length and generates in
  micro-batches of at most ``max_batch_size`` rows, LEFT-padded, with the KV cache;
* samples each row from its own ``torch.Generator`` seeded from ``(seed, conversation, sample)``
  so a seeded call returns the same completions whatever the batch size or row order; greedy
  when ``temperature == 0``;
* stops a row at an end-of-sequence token (the tokenizer's and the model's generation config's)
  or a stop string, and records the log-prob of every sampled token under the unmodified model
  distribution.

What is reused across turns: the token ids (no re-tokenization of earlier turns). The KV cache
is *not* kept between calls — a turn-2 call recomputes the prefix once per row (vLLM's prefix
caching is what avoids that on GPU).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scoreops.rollout.chat import encode_conversation
from scoreops.rollout.types import Completion, Conversation, FinishReason, SamplingParams

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["HFEngine", "row_seed"]


def row_seed(seed: int, conversation: int, sample: int) -> int:
    """A 63-bit seed for one row, stable across processes and platforms."""
    digest = hashlib.blake2b(f"{seed}:{conversation}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _as_device(device: Any) -> Any:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config has an EOS token")
    return ids


class HFEngine:
    """Batched chat generation with a transformers causal LM.

    Args:
        model: a causal LM (the policy itself: the engine holds a reference, so weight updates
            made by the trainer are seen by the next call without copying).
        tokenizer: its tokenizer (needs a chat template).
        device: where to run; the model is moved there if it is elsewhere (as transformers'
            ``pipeline(device=...)`` does). Defaults to the model's device.
        max_batch_size: most rows (conversation × sample) per ``generate`` call.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: str | torch.device | None = None,
        max_batch_size: int = 16,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if device is not None and model.device != _as_device(device):
            model.to(device)
        self.model: PreTrainedModel | None = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.max_batch_size = max_batch_size
        self.eos_token_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = min(self.eos_token_ids) if pad is None else int(pad)

    # -- RolloutEngine -------------------------------------------------------------------

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        prompt_token_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[list[Completion]]:
        import torch

        model = self._model()
        if prompt_token_ids is None:
            prompts = [encode_conversation(self.tokenizer, c) for c in conversations]
        else:
            if len(prompt_token_ids) != len(conversations):
                raise ValueError(
                    f"{len(prompt_token_ids)} prompt_token_ids for {len(conversations)} "
                    "conversations"
                )
            prompts = [list(p) for p in prompt_token_ids]
        if any(not p for p in prompts):
            raise ValueError("empty prompt")
        base_seed = (
            int(torch.randint(0, 2**62, (1,)).item()) if params.seed is None else params.seed
        )
        rows = [(c, s) for c in range(len(prompts)) for s in range(params.n)]
        # Longest first: padding stays small and an out-of-memory shows on the first batch.
        rows.sort(key=lambda r: -len(prompts[r[0]]))
        results: dict[tuple[int, int], Completion] = {}
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                seeds = [row_seed(base_seed, c, s) for c, s in chunk]
                outs = self._generate_batch(model, [prompts[c] for c, _ in chunk], seeds, params)
                results.update(zip(chunk, outs, strict=True))
        finally:
            model.train(was_training)
        return [[results[(c, s)] for s in range(params.n)] for c in range(len(prompts))]

    def sync_weights(self, model: Any) -> None:
        """Point the engine at ``model``; if it holds another module, copy the weights in."""
        current = self._model()
        source = getattr(model, "module", model)  # DDP / DeepSpeed wrappers hold the module
        if source is current:
            return
        current.load_state_dict(source.state_dict())

    def close(self) -> None:
        self.model = None

    # -- internals -----------------------------------------------------------------------

    def _model(self) -> PreTrainedModel:
        if self.model is None:
            raise RuntimeError("the engine is closed")
        return self.model

    def _generate_batch(
        self,
        model: PreTrainedModel,
        prompts: list[list[int]],
        seeds: list[int],
        params: SamplingParams,
    ) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: the last prompt token is at width-1
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)

        sampler = _RowSampler(seeds, params, self.device)
        stopper = _RowStopper(width, self.eos_token_ids, params.stop, self.tokenizer)
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            # The sampler picks the token and returns a one-hot score, so argmax selects it.
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=sorted(self.eos_token_ids),
            pad_token_id=self.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
        new = out[:, width:].tolist()
        logprobs = torch.stack(sampler.logprobs, dim=1).tolist() if sampler.logprobs else []
        completions = []
        for i, row in enumerate(new):
            end = stopper.finished_at[i]
            reason: FinishReason = "stop" if end >= 0 else "length"
            n_tokens = end + 1 if end >= 0 else min(len(row), params.max_new_tokens)
            token_ids = row[:n_tokens]
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            for s in params.stop:
                cut = text.find(s)
                if cut >= 0:
                    text = text[:cut]
            completions.append(
                Completion(
                    text=text,
                    token_ids=token_ids,
                    logprobs=[float(x) for x in logprobs[i][:n_tokens]] if logprobs else None,
                    finish_reason=reason,
                )
            )
        return completions


class _RowSampler:
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
                probs = _top_p_filter(probs, self.params.top_p)
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


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``; renormalise."""
    import torch

    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the strictly likelier tokens
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


class _RowStopper:
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
