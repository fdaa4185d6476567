"""What a run sets up before its first step: the device, the models in their precisions, the
rollout engine, the training and held-out data.

What the setup does for an algorithm comes from its
:class:`~scoreops.algorithms.registry.AlgorithmTraits` (a frozen reference model or not, a
separate generation copy or not, the prefix cache or not), never from its name.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

from scoreops.api.common import TORCH_DTYPE

if TYPE_CHECKING:
    import torch

    from scoreops.algorithms.registry import AlgorithmTraits
    from scoreops.api.scorerun import ScoreRun, ScoreRunSpec
    from scoreops.data import Item
    from scoreops.training.context import DistEnv

__all__ = ["RunFailed", "load_models", "load_split", "make_engine", "pick_device", "run_dtypes"]


class RunFailed(RuntimeError):
    """The run stopped for a reason worth showing the user (and the resource's status)."""


def pick_device(spec: ScoreRunSpec, dist: DistEnv) -> torch.device:
    """This rank's device (its GPU when the run asks for GPUs and there is one, else the CPU),
    set up for deterministic kernels; joins the process group when distributed."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device("cuda", dist.local_rank) if torch.cuda.is_available() \
        and spec.resources.gpus_per_worker > 0 else torch.device("cpu")
    if device.type == "cuda":
        # deterministic cuBLAS needs a fixed workspace; filling every torch.empty with NaN
        # (a deterministic-mode default) costs a kernel per allocation and buys nothing
        # here. Ops without a deterministic kernel run anyway (warn_only) without a warning
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", message=".*does not have a deterministic")
    if device.type == "cpu":
        # accelerate's unwrap_model (inside save_pretrained) imports DeepSpeed when it is
        # installed; told the accelerator, DeepSpeed does not probe for a GPU and warn
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if dist.distributed:
        from scoreops.training.distributed import init_process_group

        init_process_group(device)
    return device


def run_dtypes(spec: ScoreRunSpec, device: torch.device) -> tuple[str, str]:
    """``(compute, master)`` dtype names: the compute precision (fp32 on CPU), and that of
    the trained weights. The plain-torch backend keeps fp32 master weights and computes
    under autocast; DeepSpeed holds the module in the compute precision."""
    dtype = "float32" if device.type == "cpu" else TORCH_DTYPE[spec.resources.precision]
    master = "float32" if spec.resources.deepspeed == "none" else dtype
    return dtype, master


def load_models(spec: ScoreRunSpec, traits: AlgorithmTraits, device: torch.device, *,
                dtype: str, master: str) -> tuple[Any, Any, Any]:
    """``(policy, tokenizer, reference)``: the policy in the ``master`` dtype, and the frozen
    reference model in the compute ``dtype`` where the algorithm's KL term needs one (else
    ``None``)."""
    from scoreops.models import load_model

    policy, tokenizer = load_model(spec.model.uri, dtype=master, device=str(device))
    reference = None
    if traits.loads_reference(spec.algorithm.config):
        reference, _ = load_model(spec.model.uri, dtype=dtype, device=str(device))
        reference.eval().requires_grad_(False)
    return policy, tokenizer, reference


def make_engine(spec: ScoreRunSpec, traits: AlgorithmTraits, policy: Any, tokenizer: Any,
                device: torch.device, *, dtype: str, master: str, questions: list[str]) -> Any:
    """The rollout engine: a colocated vLLM engine, or the HF engine on the policy or on a
    generation copy of it."""
    if spec.rollout.engine == "vllm":
        from scoreops.rollout.vllm import VLLMEngine

        # max_model_len: the longest prompt + turns x maxNewTokens (+ instructions). The engine
        # holds its weights in the compute precision (bf16 on a GPU), whatever the master
        # weights' dtype: fp32 master weights would double its memory and halve its speed
        return VLLMEngine.colocated(policy, tokenizer, spec.rollout, questions=questions,
                                    dtype=dtype,
                                    tensor_parallel_size=spec.rollout.vllm.tensor_parallel_size)
    from scoreops.models import load_model
    from scoreops.rollout import HFEngine

    generator = policy
    if spec.resources.deepspeed == "zero3" or (master != dtype and not traits.generates_with_policy):
        # ZeRO-3 partitions the policy's parameters across ranks, and fp32 master weights
        # would generate at fp32 speed: generation runs on a full copy in the compute
        # precision that OptimizerBackend.sync_rollout refreshes after every step (unless the
        # algorithm's agents hook the policy itself, as CORY's adapters do)
        generator, _ = load_model(spec.model.uri, dtype=dtype, device=str(device))
        generator.eval().requires_grad_(False)
    # on a GPU, decoding runs on a static cache with CUDA graphs
    return HFEngine(generator, tokenizer, max_batch_size=64 if device.type == "cpu" else 256,
                    prefix_cache=traits.prefix_cache_safe)


def load_split(run: ScoreRun) -> tuple[list[Item], list[Item]]:
    """Training and held-out items of a run (no question in both)."""
    from scoreops.data import generate_items, load_items, split_train_eval

    ds = run.spec.dataset

    def load(src: Any) -> list[Item]:
        if src.generator is not None:
            g = src.generator
            return generate_items(g.task, g.size, g.seed, g.config)
        return load_items(src.uri)

    train = load(ds.train)
    if ds.eval is not None:
        held = load(ds.eval)
        seen = {_norm(i.question) for i in held}
        train = [i for i in train if _norm(i.question) not in seen]
    elif ds.eval_size > 0:
        train, held = split_train_eval(train, ds.eval_size, ds.seed)
    else:
        held = []
    if not train:
        raise RunFailed("the training set is empty after removing held-out questions")
    return train, held


def _norm(q: str) -> str:
    from scoreops.data import normalize_question

    return normalize_question(q)
