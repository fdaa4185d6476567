"""vLLM rollouts, colocated with the trainer on the same GPU (GPU only; vllm imported lazily).

:class:`VLLMEngine` implements :class:`scoreops.rollout.RolloutEngine`: the same multi-turn
contract as :class:`scoreops.rollout.HFEngine` (exact ``prompt_token_ids`` in, sampled token
ids and their log-probs out), so :func:`scoreops.rollout.run_episodes` and every training
algorithm run unchanged on it.

* **Colocated**: one ``vllm.LLM`` in the trainer's process, on the trainer's GPU, holding
  ``rollout.gpuMemoryUtilization`` of its memory for weights and KV cache.
* **Weights from the trainer**: :meth:`sync_weights` streams the policy's ``state_dict`` into
  the vLLM model runner's ``load_weights`` after every optimiser step (no files, no copy of
  the model on the host).
* **Sleep / wake**: with ``enable_sleep_mode`` the engine frees its KV cache (level 1) between
  generation phases so the optimiser step has the memory, and wakes before the next
  generation. Used only where the installed vLLM supports it.

Seeds: vLLM's per-request ``seed`` makes each (conversation, sample) reproducible for a fixed
batch; results are not bitwise those of the HF engine (different kernels).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from scoreops.rollout.chat import encode_conversation
from scoreops.rollout.types import Completion, Conversation, SamplingParams

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["VLLMEngine", "release_generation_memory", "vllm_sampling_kwargs"]


def release_generation_memory(engine: Any) -> None:
    """Put a sleep-capable engine to sleep before a training phase (no-op for other engines);
    its next ``generate`` or ``sync_weights`` wakes it."""
    sleep = getattr(engine, "sleep", None)
    if callable(sleep):
        sleep()


def vllm_sampling_kwargs(params: SamplingParams, seed: int | None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one request (pure; no vllm import).

    ``n`` is always 1: each (conversation, sample) is its own request with its own seed, which
    keeps the samples of a conversation independent of how many there are. ``logprobs=0``
    asks for the log-prob of each sampled token only (vLLM reports it under the unmodified
    distribution with ``logprobs_mode="raw_logprobs"``, set on the engine).
    """
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "logprobs": 0,
        "detokenize": True,
        "skip_special_tokens": True,
    }
    if params.stop:
        kwargs["stop"] = list(params.stop)
        kwargs["include_stop_str_in_output"] = False
    if seed is not None and not params.greedy:
        kwargs["seed"] = seed
    return kwargs


def _request_seed(base: int, conversation: int, sample: int) -> int:
    return (base * 1_000_003 + conversation * 7919 + sample) % (2**31 - 1)


class VLLMEngine:
    """A colocated vLLM engine that generates with the trainer's current weights."""

    def __init__(self, llm: Any, tokenizer: PreTrainedTokenizerBase, *,
                 sleep_mode: bool = False) -> None:
        self.llm: Any | None = llm
        self.tokenizer = tokenizer
        self.sleep_mode = sleep_mode
        self._asleep = False
        self.max_model_len: int | None = None

    @classmethod
    def colocated(cls, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                  rollout: Any, *, max_model_len: int | None = None,
                  dtype: str | None = None) -> VLLMEngine:
        """An engine on the policy's GPU with ``rollout.gpu_memory_utilization`` of its memory,
        loaded with the policy's current weights.

        ``policy`` must be a transformers model saved or loadable by path
        (``policy.name_or_path``); vLLM builds its own model from that config and then
        receives the live weights through :meth:`sync_weights`.
        """
        path = getattr(policy, "name_or_path", None) or policy.config._name_or_path
        engine = cls._build(
            path, tokenizer,
            dtype=dtype or str(next(policy.parameters()).dtype).removeprefix("torch."),
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            max_model_len=max_model_len,
        )
        engine.sync_weights(policy)
        return engine

    @classmethod
    def from_path(cls, path: str, *, dtype: str = "bfloat16",
                  gpu_memory_utilization: float = 0.9,
                  max_model_len: int | None = None) -> VLLMEngine:
        """A standalone engine serving the weights in ``path`` (the serving backend)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls._build(path, tokenizer, dtype=dtype,
                          gpu_memory_utilization=gpu_memory_utilization,
                          max_model_len=max_model_len)

    @classmethod
    def _build(cls, path: str, tokenizer: PreTrainedTokenizerBase, *, dtype: str,
               gpu_memory_utilization: float, max_model_len: int | None) -> VLLMEngine:
        import dataclasses
        import os

        import torch

        # the engine core in this process, so its model runner is reachable for load_weights
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM
        from vllm.engine.arg_utils import EngineArgs

        if not torch.cuda.is_available():
            raise RuntimeError("the vllm engine needs a CUDA GPU; use engine hf on CPU")
        kwargs: dict[str, Any] = {
            "model": path,
            "tokenizer": path,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enable_prefix_caching": True,
            "seed": 0,
            "max_model_len": max_model_len,
            "tensor_parallel_size": 1,
            "logprobs_mode": "raw_logprobs",
            "enable_sleep_mode": True,
        }
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # under torchrun every rank holds its own engine on its own GPU
            kwargs["distributed_executor_backend"] = "external_launcher"
        known = {f.name for f in dataclasses.fields(EngineArgs)}
        kwargs = {k: v for k, v in kwargs.items()
                  if v is not None and (k in known or k in ("model", "tokenizer"))}
        engine = cls(LLM(**kwargs), tokenizer, sleep_mode="enable_sleep_mode" in kwargs)
        engine.max_model_len = max_model_len
        return engine

    # -- RolloutEngine -------------------------------------------------------------------------

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        prompt_token_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams as VSamplingParams

        llm = self._llm()
        self._wake()
        if prompt_token_ids is None:
            prompts = [encode_conversation(self.tokenizer, c) for c in conversations]
        else:
            if len(prompt_token_ids) != len(conversations):
                raise ValueError(f"{len(prompt_token_ids)} prompt_token_ids for "
                                 f"{len(conversations)} conversations")
            prompts = [list(p) for p in prompt_token_ids]
        if any(not p for p in prompts):
            raise ValueError("empty prompt")
        base = params.seed if params.seed is not None else 0
        requests, sampling = [], []
        for c, ids in enumerate(prompts):
            for s in range(params.n):
                requests.append({"prompt_token_ids": ids})
                seed = _request_seed(base, c, s) if params.seed is not None else None
                sampling.append(VSamplingParams(**vllm_sampling_kwargs(params, seed)))
        outputs = llm.generate(requests, sampling_params=sampling, use_tqdm=False)
        flat = [self._completion(o.outputs[0]) for o in outputs]
        return [flat[c * params.n:(c + 1) * params.n] for c in range(len(prompts))]

    def sync_weights(self, model: Any) -> None:
        """Push ``model``'s weights into the vLLM model runner (in place, on the GPU)."""
        llm = self._llm()
        self._wake()
        state = model.state_dict()
        runner_model = _runner_model(llm)
        if runner_model is not None:
            runner_model.load_weights(weights=_named_tensors(state.items()))
        else:  # engines that hide the model: run load_weights inside the worker
            def load(worker_self: Any) -> None:
                worker_self.model_runner.model.load_weights(weights=_named_tensors(state.items()))

            llm.collective_rpc(load)
        if hasattr(llm, "reset_prefix_cache"):
            llm.reset_prefix_cache()  # cached KV of the old weights is stale

    def sleep(self) -> None:
        """Free the KV cache between generation phases (no-op where unsupported)."""
        if self.sleep_mode and not self._asleep and self.llm is not None:
            self.llm.sleep(level=1)
            self._asleep = True

    def close(self) -> None:
        if self.llm is not None:
            del self.llm
            self.llm = None

    # -- internals -----------------------------------------------------------------------------

    def _llm(self) -> Any:
        if self.llm is None:
            raise RuntimeError("the engine is closed")
        return self.llm

    def _wake(self) -> None:
        if self._asleep and self.llm is not None:
            self.llm.wake_up()
            self._asleep = False

    def _completion(self, out: Any) -> Completion:
        token_ids = list(out.token_ids)
        logprobs = None
        if out.logprobs is not None:
            logprobs = [float(step[tid].logprob)
                        for step, tid in zip(out.logprobs, token_ids, strict=False)]
        reason = "stop" if out.finish_reason == "stop" else "length"
        return Completion(text=out.text, token_ids=token_ids, logprobs=logprobs,
                          finish_reason=reason)  # type: ignore[arg-type]


def _named_tensors(items: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    for name, tensor in items:
        yield name, tensor.detach()


def _runner_model(llm: Any) -> Any | None:
    """The in-process model of a single-process vLLM engine, where reachable."""
    engine = getattr(llm, "llm_engine", None)
    for path in ("model_executor.driver_worker.worker.model_runner.model",
                 "model_executor.driver_worker.model_runner.model"):
        obj: Any = engine
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None
