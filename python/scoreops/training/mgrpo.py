"""MGRPO's optimiser step: GRPO on the question (layer 1), then GRPO on the corrections that
guide phrases elicit from the layer-1 answers (layer 2). See :mod:`scoreops.algorithms.mgrpo`.

Also home of :func:`extend_episodes`, which continues one-turn episodes with a per-episode
follow-up message (a guide phrase here; the observer's prompt in CORY).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scoreops.training.algorithms import (
    MAX_SEQUENCE_TOKENS,
    LossTerm,
    backward_micro_batches,
    micro_batch_rows,
    policy_loss,
    register,
    sample_episodes,
)

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import Episode, RolloutEngine, SamplingParams, TrainingBatch
    from scoreops.training.context import StepContext

__all__ = ["GUIDE_SEPARATOR", "MGRPOAlgorithm", "extend_episodes", "guided_corrections"]

GUIDE_SEPARATOR = "\n\n"
"""Between the model's answer and the guide phrase in the same-turn form."""


def extend_episodes(
    engine: RolloutEngine,
    episodes: Sequence[Episode],
    messages: Sequence[str],
    params: SamplingParams,
) -> list[Episode]:
    """``params.n`` one-more-turn continuations of each episode.

    Continuation ``j`` of episode ``i`` answers episode i's last conversation +
    ``assistant(its last answer)`` + ``user(messages[i])``; its prompt tokens continue the
    episode's own tokens (no re-tokenisation of the answer). Returns ``len(episodes) · n``
    episodes, group-contiguous (episode 0's n continuations first), each a copy of its source
    episode with the new turn appended and ``sample`` = ``source.sample · n + j``.
    """
    from scoreops.rollout import Turn, continuation_ids
    from scoreops.rollout.chat import encode_conversation, follow_up

    if len(messages) != len(episodes):
        raise ValueError(f"{len(messages)} follow-up messages for {len(episodes)} episodes")
    if not episodes:
        return []
    tokenizer = engine.tokenizer
    convs, ids = [], []
    for ep, msg in zip(episodes, messages, strict=True):
        last = ep.turns[-1]
        prompt = last.prompt_token_ids
        if prompt is None:
            prompt = encode_conversation(tokenizer, last.messages)
        conv, new = follow_up(last.messages, last.completion.text, msg)
        convs.append(conv)
        ids.append(continuation_ids(tokenizer, last.messages, prompt,
                                    last.completion.token_ids, new))
    outs = engine.generate(convs, params, prompt_token_ids=ids)
    result: list[Episode] = []
    for ep, conv, prompt_ids, group in zip(episodes, convs, ids, outs, strict=True):
        if len(group) != params.n:
            raise RuntimeError(f"engine returned {len(group)} completions, expected {params.n}")
        for j, completion in enumerate(group):
            turns = [dataclasses.replace(t) for t in ep.turns]
            turns.append(Turn(messages=conv, completion=completion,
                              prompt_token_ids=list(prompt_ids)))
            result.append(dataclasses.replace(ep, sample=ep.sample * params.n + j, turns=turns))
    return result


def _strip_end_of_turn(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """``ids`` without the special tokens (end of turn / sequence) that close them."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = list(ids)
    while out and out[-1] in special:
        out.pop()
    return out


def guided_corrections(
    engine: RolloutEngine,
    episodes: Sequence[Episode],
    phrases: Sequence[str],
    params: SamplingParams,
    *,
    form: str = "same-turn",
) -> tuple[list[Episode], list[str]]:
    """``params.n`` guided corrections of each one-turn episode, group-contiguous.

    Returns ``(episodes, answers)``: ``answers[k]`` is the text the verifier judges for
    correction ``k``, and the correction's tokens are the last turn of ``episodes[k]`` (the
    tokens layer 2 trains; everything before is context).

    * ``"same-turn"`` (the MGRPO paper's ``q' = concat(q, o) + p_guide``): the model's answer
      ``o`` (its tokens as sampled, without the end-of-turn token) and then
      :data:`GUIDE_SEPARATOR` + the phrase are the start of the same assistant turn, which
      the model continues. The correction is a one-turn episode whose prompt ends inside the
      assistant turn; its answer is the whole assistant turn, ``o + separator + phrase +
      continuation`` (the last answer in it counts).
    * ``"user-turn"``: the phrase is a new user message after the answer
      (:func:`extend_episodes`); the answer is the new turn's text.
    """
    from scoreops.rollout import Turn, encode_conversation
    from scoreops.rollout.chat import _encode

    if len(phrases) != len(episodes):
        raise ValueError(f"{len(phrases)} guide phrases for {len(episodes)} episodes")
    if form == "user-turn":
        out = extend_episodes(engine, episodes, phrases, params)
        return out, [ep.turns[-1].text for ep in out]
    if form != "same-turn":
        raise ValueError(f"unknown guide form {form!r}; expected 'same-turn' or 'user-turn'")
    if not episodes:
        return [], []
    tokenizer = engine.tokenizer
    convs, ids, prefixes = [], [], []
    for ep, phrase in zip(episodes, phrases, strict=True):
        last = ep.turns[-1]
        prompt = last.prompt_token_ids
        if prompt is None:
            prompt = encode_conversation(tokenizer, last.messages)
        answer_ids = _strip_end_of_turn(tokenizer, last.completion.token_ids)
        tail = GUIDE_SEPARATOR + phrase
        prefix = last.completion.text + tail
        convs.append([*last.messages, {"role": "assistant", "content": prefix}])
        ids.append([*prompt, *answer_ids, *_encode(tokenizer, tail)])
        prefixes.append(prefix)
    outs = engine.generate(convs, params, prompt_token_ids=ids)
    result: list[Episode] = []
    answers: list[str] = []
    for ep, conv, prompt_ids, prefix, group in zip(episodes, convs, ids, prefixes, outs,
                                                    strict=True):
        if len(group) != params.n:
            raise RuntimeError(f"engine returned {len(group)} completions, expected {params.n}")
        for j, completion in enumerate(group):
            turn = Turn(messages=conv, completion=completion, prompt_token_ids=list(prompt_ids))
            result.append(dataclasses.replace(ep, sample=ep.sample * params.n + j, turns=[turn]))
            answers.append(prefix + completion.text)
    return result, answers


def _tokens(episodes: Sequence[Episode], turn: int) -> int:
    return sum(len(ep.turns[turn].completion.token_ids) for ep in episodes)


@register("mgrpo")
class MGRPOAlgorithm:
    """Both layers in one optimiser step: ``L = L_layer1 + L_layer2`` on the same policy.

    Statistics per step: ``reward_t1`` (layer-1 answers), ``reward_t2`` (the guided
    corrections of every layer-1 answer: how often one correction fixes or keeps it right),
    ``layer2_groups`` (kept correction prompts, i.e. layer-2 GRPO groups that survived
    selection), ``layer2_reward`` (mean reward of their H variations), ``i2c``/``c2i`` and the
    per-layer losses and KL.
    """

    name = "mgrpo"

    def __init__(self, spec: Any) -> None:
        self.cfg = spec.algorithm.mgrpo
        if self.cfg.variations < 2 and not self.cfg.keep_selected:
            raise ValueError(
                "algorithm.mgrpo.variations must be >= 2 with keepSelected false: layer 2 "
                "normalises advantages within the H variations of a kept correction, got "
                f"{self.cfg.variations}")

    def stage(self, step: int) -> str:
        return "mgrpo"

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]:
        import torch

        from scoreops.algorithms.advantages import group_normalized
        from scoreops.algorithms.mgrpo import (
            assemble_layer2_groups,
            draw_guide_phrases,
            layer2_advantages,
            layer_loss,
            select_corrections,
        )
        from scoreops.rollout import SamplingParams, build_training_batch
        from scoreops.rollout.vllm import release_generation_memory

        cfg, ro_spec = self.cfg, ctx.spec.rollout
        g, h = ro_spec.samples_per_prompt, cfg.variations
        seed = ctx.step_seed(step)
        common = {"clip_eps": cfg.clip_epsilon, "beta": cfg.beta,
                  "kl_estimator": cfg.kl_estimator}

        # layer 1: GRPO on the question
        ro = sample_episodes(ctx, [p.question for p in prompts], prompts, turns=1, n=g,
                             seed=seed)
        r1 = ro.reward_tensor(0)
        adv1 = group_normalized(r1.reshape(-1, g)).reshape(-1)

        # layer 2: x' = x ⊕ o_i ⊕ guide phrase; keep prompts whose correction is accepted
        t0 = time.perf_counter()
        guides = draw_guide_phrases(cfg.guide_phrases, len(ro.episodes), seed=seed)
        params = SamplingParams(max_new_tokens=ro_spec.max_new_tokens,
                                temperature=ro_spec.temperature, top_p=ro_spec.top_p, n=1,
                                seed=ctx.step_seed(step, salt=1))
        corrections, answers = guided_corrections(ctx.engine, ro.episodes, guides, params,
                                                  form=cfg.guide_form)
        rc = [ctx.verifier(a, item) for a, item in zip(answers, ro.items, strict=True)]
        kept = select_corrections(rc)
        generated = ro.generated_tokens + _tokens(corrections, -1)
        layer2_reward = 0.0
        adv2 = torch.zeros(0)
        group: list[Episode] = []
        size = h + 1 if cfg.keep_selected else h
        if kept:
            variations, var_answers = guided_corrections(
                ctx.engine, [ro.episodes[i] for i in kept], [guides[i] for i in kept],
                dataclasses.replace(params, n=h, seed=ctx.step_seed(step, salt=2)),
                form=cfg.guide_form)
            var_items = [ro.items[i] for i in kept for _ in range(h)]
            rv = [ctx.verifier(a, item) for a, item in zip(var_answers, var_items, strict=True)]
            generated += _tokens(variations, -1)
            group, group_rewards, _ = assemble_layer2_groups(
                kept, corrections, rc, variations, rv, variations_per_group=h,
                keep_selected=cfg.keep_selected)
            r2 = torch.tensor(group_rewards, dtype=torch.float32, device=ctx.device)
            layer2_reward = float(torch.tensor(rv).mean())
            adv2 = layer2_advantages(r2.reshape(-1, size))
        seconds = ro.seconds + time.perf_counter() - t0
        release_generation_memory(ctx.engine)  # vLLM frees its KV cache for the update

        batch1 = build_training_batch(ctx.tokenizer, ro.episodes, MAX_SEQUENCE_TOKENS)

        def loss1(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            return layer_loss(logp, ref, adv1[rows], mb.mask(1), layer=1, **common)

        batch2 = build_training_batch(ctx.tokenizer, group, MAX_SEQUENCE_TOKENS) \
            if group else None
        train_turn = len(group[0].turns) if group else 1

        def loss2(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            # only the correction is trained; the layer-1 answer (and the phrase) is context
            return layer_loss(logp, ref, adv2[rows], mb.mask(train_turn), layer=2, **common)

        # layer 2 is a term on every rank, also where no group survived: each layer is the
        # mean over all ranks' rows of that layer
        stats = backward_micro_batches(ctx, [
            LossTerm(batch1, micro_batch_rows(ctx, g), policy_loss(ctx, loss1)),
            LossTerm(batch2, micro_batch_rows(ctx, size), policy_loss(ctx, loss2)),
        ])
        n = max(1, len(rc))
        r1_list = r1.tolist()
        stats.update({
            "loss": stats.get("layer1_loss", 0.0) + stats.get("layer2_loss", 0.0),
            "reward_t1": float(r1.mean()),
            "reward_t2": sum(rc) / n,
            "i2c": sum(1 for a, b in zip(r1_list, rc, strict=True) if a < 0.5 <= b) / n,
            "c2i": sum(1 for a, b in zip(r1_list, rc, strict=True) if b < 0.5 <= a) / n,
            "layer2_groups": float(len(kept)),
            "layer2_reward": layer2_reward,
            "generated_tokens": float(generated),
            "rollout_seconds": seconds,
            "tokens_per_second": generated / max(seconds, 1e-9),
        })
        return stats
