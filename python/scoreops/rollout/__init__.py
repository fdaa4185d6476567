"""Multi-turn rollouts: attempt → correction instruction → attempt, behind one engine interface.

* :class:`RolloutEngine` — what an engine implements (:class:`HFEngine` here; vLLM on GPU).
* :func:`run_episodes` — n trajectories per question, each turn continuing its own tokens.
* :func:`build_training_batch`, :func:`sequence_token_logprobs`, :func:`per_turn_sums` — the
  packed sequences, their token log-probs and per-turn sums the objectives consume.

Importing this package does not import torch or transformers.
"""

from scoreops.rollout.batch import (
    TrainingBatch,
    build_training_batch,
    episode_token_ids,
    per_turn_sums,
    sequence_token_logprobs,
)
from scoreops.rollout.chat import continuation_ids, encode_conversation, render_conversation
from scoreops.rollout.episodes import run_episodes
from scoreops.rollout.hf import HFEngine
from scoreops.rollout.types import (
    Completion,
    Conversation,
    Episode,
    FinishReason,
    Message,
    RolloutEngine,
    SamplingParams,
    Turn,
)

__all__ = [
    "Completion",
    "Conversation",
    "Episode",
    "FinishReason",
    "HFEngine",
    "Message",
    "RolloutEngine",
    "SamplingParams",
    "TrainingBatch",
    "Turn",
    "build_training_batch",
    "continuation_ids",
    "encode_conversation",
    "episode_token_ids",
    "per_turn_sums",
    "render_conversation",
    "run_episodes",
    "sequence_token_logprobs",
]
