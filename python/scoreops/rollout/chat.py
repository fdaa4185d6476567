"""Chat-template tokenization that keeps multi-turn token sequences consistent.

Turn 1's prompt is the chat template rendered with the generation prompt and tokenized once.
Turn t+1's prompt is **not** re-tokenized from text: it is turn t's prompt ids + turn t's
completion ids (exactly as sampled) + the tokens the template puts between an assistant answer
and the next generation prompt (end of the assistant turn, the new user message, the new
assistant header). Decoding a completion and re-encoding it can give different ids than the
ones sampled, which would make the training sequence differ from what the model generated
from; continuing at the token level rules that out.

The text between the answer and the next generation prompt is found by rendering the
conversation with a placeholder answer: ``render(history + [assistant(PLACEHOLDER)] + new,
gen=True)`` must start with ``render(history, gen=True)``, and everything after the
placeholder is the tail. If the completion already ends with the tail's first token (the
end-of-turn token it was stopped by, e.g. ``<|im_end|>``) that token is not repeated; if the
completion was cut by the length limit, the tail's end-of-turn token closes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from scoreops.rollout.types import Conversation, Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["continuation_ids", "encode_conversation", "follow_up", "render_conversation"]

_PLACEHOLDER = "SCOREOPSASSISTANTREPLYPLACEHOLDER"


def render_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The conversation as text, through the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) "
            "has no chat template; scoreops rollouts need a chat (instruct) model"
        )
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template writes any BOS itself; add_special_tokens=False keeps it from doubling.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]
) -> list[int]:
    """Token ids of the conversation followed by the assistant generation prompt."""
    return _encode(tokenizer, render_conversation(tokenizer, messages))


def continuation_ids(
    tokenizer: PreTrainedTokenizerBase,
    history: Sequence[Message],
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    new_messages: Sequence[Message],
) -> list[int]:
    """Prompt ids for the next turn: ``prompt_ids + completion_ids + tail``.

    Args:
        history: the conversation ``prompt_ids`` encodes (ending with a user message).
        prompt_ids: the tokens the previous turn was generated from.
        completion_ids: the tokens it generated.
        new_messages: messages after the assistant answer (e.g. the correction instruction).
    """
    base = render_conversation(tokenizer, history)
    probe = render_conversation(
        tokenizer, [*history, {"role": "assistant", "content": _PLACEHOLDER}, *new_messages]
    )
    if not probe.startswith(base):
        raise ValueError(
            "the chat template renders the earlier turns differently once more messages follow "
            "(the conversation's rendering is not a prefix of its continuation's), so turn-level "
            "token continuation is impossible with it; use a prefix-stable template"
        )
    rest = probe[len(base):]
    at = rest.find(_PLACEHOLDER)
    if at < 0:
        raise ValueError("the chat template drops assistant messages from the history")
    tail = _encode(tokenizer, rest[at + len(_PLACEHOLDER):])
    completion = list(completion_ids)
    if completion and tail and completion[-1] == tail[0]:
        tail = tail[1:]
    return [*prompt_ids, *completion, *tail]


def follow_up(
    history: Conversation, answer: str, instruction: str
) -> tuple[Conversation, list[Message]]:
    """(next turn's conversation, the messages added after the answer)."""
    new: list[Message] = [{"role": "user", "content": instruction}]
    return [*history, {"role": "assistant", "content": answer}, *new], new
