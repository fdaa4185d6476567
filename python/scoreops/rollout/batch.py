"""Training batches from episodes, and the log-probabilities of their tokens under a model.

One sequence per episode: the chat-templated ``[x][y1][instruction][y2]…`` exactly as the engine
saw and produced it (the last turn's prompt ids + its completion ids; every earlier turn's
prompt + completion is a prefix of it, see :mod:`scoreops.rollout.chat`). ``turn_mask`` is
``t`` on the tokens generated in turn ``t`` (1-based, including the end-of-sequence token that
ended the turn) and 0 on context: the question, the template's tokens, the instruction and
padding. Sequences are RIGHT-padded (training needs no generation prompt at the end, and
right padding keeps default position ids valid).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from scoreops.rollout.chat import continuation_ids, encode_conversation
from scoreops.rollout.types import Episode

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "TrainingBatch",
    "build_training_batch",
    "episode_token_ids",
    "per_turn_sums",
    "sequence_token_logprobs",
]

# Architectures whose causal-LM head is exactly ``lm_head(final hidden state)`` (no soft-capping,
# no logit scaling), so log-probs can be computed from the hidden states in chunks.
_PLAIN_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo", "olmo2", "phi3", "gemma", "qwen2_moe",
     "qwen3_moe", "mixtral"}
)
_CHUNK_ELEMENTS = 1 << 26  # logits materialised at once: 64M floats = 256 MiB in fp32


@dataclass
class TrainingBatch:
    """Right-padded token sequences, one per episode. All tensors are ``[B, T]`` but ``truncated``.

    Attributes:
        input_ids: token ids (padding: the tokenizer's pad id).
        attention_mask: 1 on real tokens, 0 on padding.
        turn_mask: t on the tokens generated in turn t (1-based), 0 elsewhere.
        truncated: ``[B]`` bool, True where the sequence was cut at ``max_len``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    turn_mask: torch.Tensor
    truncated: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_turns(self) -> int:
        return int(self.turn_mask.max().item()) if self.turn_mask.numel() else 0

    def mask(self, turn: int) -> torch.Tensor:
        """Bool ``[B, T]`` mask of the tokens generated in ``turn`` (1-based)."""
        return self.turn_mask == turn

    def to(self, device: Any) -> TrainingBatch:
        return TrainingBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: slice | torch.Tensor | Sequence[int]) -> TrainingBatch:
        """The rows ``index`` (a slice, an index tensor or a list of row numbers)."""
        import torch

        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=self.input_ids.device)
        return TrainingBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def micro_batches(self, size: int) -> Iterator[TrainingBatch]:
        """Consecutive row slices of at most ``size`` rows."""
        if size < 1:
            raise ValueError(f"micro-batch size must be >= 1, got {size}")
        for start in range(0, len(self), size):
            yield self.select(slice(start, start + size))


def _new_messages(prev: Episode, t: int) -> list[dict[str, str]]:
    before, after = prev.turns[t - 1].messages, prev.turns[t].messages
    # after == before + [assistant(answer)] + new messages
    if len(after) < len(before) + 2 or after[: len(before)] != before:
        raise ValueError(
            f"episode {prev.question_index}/{prev.sample}: turn {t + 1}'s conversation does not "
            f"extend turn {t}'s with the answer and new messages"
        )
    return after[len(before) + 1 :]


def episode_token_ids(
    tokenizer: PreTrainedTokenizerBase, episode: Episode
) -> tuple[list[int], list[int]]:
    """(token ids, turn mask) of one episode, before padding and truncation.

    Uses each turn's recorded ``prompt_token_ids`` where present, otherwise rebuilds them with
    the chat template exactly as :func:`scoreops.rollout.run_episodes` does. Raises if a
    turn's prompt does not start with the previous turn's prompt + completion tokens.
    """
    if not episode.turns:
        raise ValueError(f"episode {episode.question_index}/{episode.sample} has no turns")
    prompts: list[list[int]] = []
    for t, turn in enumerate(episode.turns):
        if turn.prompt_token_ids is not None:
            ids = list(turn.prompt_token_ids)
        elif t == 0:
            ids = encode_conversation(tokenizer, turn.messages)
        else:
            prev = episode.turns[t - 1]
            ids = continuation_ids(
                tokenizer, prev.messages, prompts[-1], prev.completion.token_ids,
                _new_messages(episode, t),
            )
        if t > 0:
            expected = prompts[-1] + list(episode.turns[t - 1].completion.token_ids)
            if ids[: len(expected)] != expected:
                raise ValueError(
                    f"episode {episode.question_index}/{episode.sample}: turn {t + 1}'s prompt "
                    f"tokens do not continue turn {t}'s prompt + completion tokens (was the "
                    "history re-tokenized?)"
                )
        prompts.append(ids)
    last = episode.turns[-1]
    sequence = prompts[-1] + list(last.completion.token_ids)
    mask = [0] * len(sequence)
    for t, (ids, turn) in enumerate(zip(prompts, episode.turns, strict=True)):
        for i in range(len(ids), len(ids) + len(turn.completion.token_ids)):
            mask[i] = t + 1
    return sequence, mask


def build_training_batch(
    tokenizer: PreTrainedTokenizerBase, episodes: Sequence[Episode], max_len: int
) -> TrainingBatch:
    """One right-padded sequence per episode with per-turn masks, cut at ``max_len`` tokens.

    Sequences longer than ``max_len`` lose their end (the last turn's last tokens first) and
    are flagged in ``truncated``; the trainer decides whether to drop or keep them.
    """
    import torch

    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if not episodes:
        raise ValueError("no episodes")
    rows = [episode_token_ids(tokenizer, ep) for ep in episodes]
    width = min(max_len, max(len(ids) for ids, _ in rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    turn_mask = torch.zeros((len(rows), width), dtype=torch.long)
    truncated = torch.zeros(len(rows), dtype=torch.bool)
    for i, (ids, mask) in enumerate(rows):
        n = min(len(ids), width)
        input_ids[i, :n] = torch.tensor(ids[:n])
        attention[i, :n] = 1
        turn_mask[i, :n] = torch.tensor(mask[:n])
        truncated[i] = len(ids) > width
    return TrainingBatch(input_ids, attention, turn_mask, truncated)


def _head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """log_softmax(hidden @ weightᵀ + bias)[targets] without materialising log_softmax."""
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)


def _logits_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)


def _chunked_head(
    model: Any, hidden: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Log-probs of ``targets [b, L]`` from final hidden states ``[b, L, H]``, vocabulary
    projection in chunks; under autograd each chunk is checkpointed, so only the hidden
    states are kept for the backward pass (logits are recomputed one chunk at a time)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    head = model.get_output_embeddings()
    b, length, h = hidden.shape
    flat_h, flat_t = hidden.reshape(-1, h), targets.reshape(-1)
    step = max(1, _CHUNK_ELEMENTS // head.weight.shape[0])
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    parts = []
    for s in range(0, flat_h.shape[0], step):
        args = (flat_h[s : s + step], head.weight, head.bias, flat_t[s : s + step], temperature)
        parts.append(
            checkpoint(_head_logprobs, *args, use_reentrant=False) if grad else _head_logprobs(*args)
        )
    return torch.cat(parts).reshape(b, length)


def _fused_head_ok(model: Any) -> bool:
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    return (
        isinstance(head, torch.nn.Linear)
        and hasattr(model, "get_decoder")
        and getattr(config, "model_type", None) in _PLAIN_HEAD_MODEL_TYPES
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
    )


def sequence_token_logprobs(
    model: PreTrainedModel,
    batch: TrainingBatch,
    *,
    micro_batch_size: int | None = None,
    temperature: float = 1.0,
    fused_head: bool | None = None,
) -> torch.Tensor:
    """``out[b, i] = log π(input_ids[b, i] | input_ids[b, :i])``, shape ``[B, T]``.

    One forward pass per micro-batch (trimmed to its longest sequence). Position 0 and padding
    get 0. Only the log-probs of the target tokens are kept: with ``fused_head`` (the default
    for plain-head architectures such as Llama/Qwen/Mistral) the vocabulary projection runs in
    chunks from the decoder's hidden states and is recomputed in the backward pass, so the
    ``[B, T, V]`` logits are never held at once; otherwise the model's logits are used.
    ``fused_head=False`` is needed for wrappers that must be entered through the top-level
    forward (e.g. FSDP).

    Differentiable when grad is enabled; for training, call it per micro-batch
    (:meth:`TrainingBatch.micro_batches`) and backward each, so that only one micro-batch's
    activations live at a time. ``temperature`` divides the logits (match the sampling
    temperature for importance ratios against the sampler's distribution).
    """
    import torch
    import torch.nn.functional as F

    fused = _fused_head_ok(model) if fused_head is None else fused_head
    device = next(model.parameters()).device
    size = len(batch) if micro_batch_size is None else micro_batch_size
    width = batch.input_ids.shape[1]
    outputs = []
    for mb in batch.micro_batches(max(1, size)):
        length = max(1, int(mb.attention_mask.sum(dim=1).max().item()))
        ids = mb.input_ids[:, :length].to(device)
        attn = mb.attention_mask[:, :length].to(device)
        positions = (attn.cumsum(dim=-1) - 1).clamp(min=0)
        targets = ids[:, 1:]
        if fused:
            hidden = model.get_decoder()(
                input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False
            ).last_hidden_state
            lp = _chunked_head(model, hidden[:, :-1], targets, temperature)
        else:
            logits = model(
                input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False
            ).logits
            lp = _logits_logprobs(logits[:, :-1], targets, temperature)
        lp = F.pad(lp, (1, width - length), value=0.0)
        valid = F.pad(attn, (0, width - length), value=0)
        outputs.append(lp * valid.to(lp.dtype))
    return torch.cat(outputs, dim=0)


def per_turn_sums(
    token_logprobs: torch.Tensor, turn_mask: torch.Tensor, turn: int
) -> torch.Tensor:
    """``[B]``: the sum of ``token_logprobs`` over the tokens generated in ``turn`` (1-based):
    the log-probability of that turn's answer given everything before it."""
    return (token_logprobs * (turn_mask == turn).to(token_logprobs.dtype)).sum(dim=-1)
