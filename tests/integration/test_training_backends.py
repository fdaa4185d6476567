"""The optimiser backends' precision, resume and communication, on the CPU.

* fp32 master weights under bf16 autocast: at lr 5e-6 every parameter moves, the norm weights
  (value 1.0) included, where AdamW on bf16 weights in place leaves those unchanged (a step of
  5e-6 is below half of bf16's spacing at 1.0);
* fp16 scales the loss and skips a step whose gradients overflowed;
* resuming maps ``optimizer.pt`` onto the backend's own device (a checkpoint rank 0 wrote from
  ``cuda:0`` loads on any rank, and on a machine without CUDA);
* gradients are all-reduced in buckets, with the same result as one flat all-reduce
  (two gloo processes);
* under ZeRO-3 the rollout copy is refreshed one module's parameters at a time.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops.training.backend import TorchBackend, compute_dtype  # noqa: E402
from scoreops.training.distributed import all_reduce_gradients, gradient_buckets  # noqa: E402


def tiny_llama(seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, vocab_size=96,
                      max_position_embeddings=64, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).float()


def backend_for(model: Any, precision: str, lr: float = 5e-6) -> TorchBackend:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return TorchBackend(model, opt, sched, max_grad_norm=1.0, device=torch.device("cpu"),
                        precision=precision)


def train_steps(model: Any, backend: Any, steps: int, scale: float = 1.0) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    norms = []
    for _ in range(steps):
        ids = torch.randint(0, 96, (4, 12), generator=gen)
        backend.zero_grad()
        with backend.autocast():
            logits = model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, 96), ids[:, 1:].reshape(-1)) * scale
        backend.backward(loss)
        norms.append(backend.step())
    return norms


def moved(before: dict[str, torch.Tensor], model: Any) -> dict[str, bool]:
    return {k: not torch.equal(before[k].float(), v.detach().float())
            for k, v in model.named_parameters()}


def test_bf16_autocast_over_fp32_master_weights_moves_every_parameter() -> None:
    model = tiny_llama()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    backend = backend_for(model, "bf16")
    seen: list[torch.dtype] = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype))
    train_steps(model, backend, 3)
    hook.remove()
    assert seen and all(d == torch.bfloat16 for d in seen)  # the computation ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights did not
    changed = moved(before, model)
    assert all(changed.values()), [k for k, v in changed.items() if not v]
    norms = [k for k in changed if k.endswith("norm.weight")]
    assert len(norms) == 5  # two per layer and the final one, all moved


def test_bf16_weights_updated_in_place_lose_small_updates() -> None:
    """What the backend replaced: the policy loaded in bf16, AdamW on it in place."""
    model = tiny_llama().to(torch.bfloat16)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=5e-6, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    backend = TorchBackend(model, opt, sched, max_grad_norm=1.0, device=torch.device("cpu"))
    train_steps(model, backend, 3)
    changed = moved(before, model)
    assert not any(v for k, v in changed.items() if k.endswith("norm.weight"))


def test_autocast_precision_refuses_low_precision_master_weights() -> None:
    model = tiny_llama().to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"resources\.precision bf16 .* load the policy in float32"):
        backend_for(model, "bf16")
    with pytest.raises(ValueError, match=r"resources\.precision must be one of fp32, bf16, fp16"):
        compute_dtype("int8")


def test_fp16_scales_the_loss_and_skips_an_overflowing_step() -> None:
    model = tiny_llama()
    backend = backend_for(model, "fp16", lr=1e-3)
    assert backend.scaler is not None
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    train_steps(model, backend, 2)
    assert all(moved(before, model).values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    scale = backend.scaler.get_scale()
    frozen = {k: v.detach().clone() for k, v in model.named_parameters()}
    norms = train_steps(model, backend, 1, scale=float("inf"))  # gradients overflow
    assert not all(map(lambda x: x == x and x < float("inf"), norms))
    assert not any(moved(frozen, model).values())  # the step was skipped
    assert backend.scaler.get_scale() < scale  # and the scale lowered


@contextlib.contextmanager
def saved_as_from_cuda() -> Iterator[None]:
    """``torch.save`` tags every storage as living on ``cuda:0``, as rank 0 of a GPU run
    writes them (the bytes are the same; only the location recorded with them differs)."""
    import torch.serialization as ser

    registry = list(ser._package_registry)
    ser.register_package(-100, lambda obj: "cuda:0", lambda obj, loc: None)
    try:
        yield
    finally:
        ser._package_registry[:] = registry


def test_resume_maps_the_optimizer_state_onto_this_device(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_llama()
    backend = backend_for(model, "fp32", lr=1e-3)
    train_steps(model, backend, 2)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    with saved_as_from_cuda():
        backend.save_state(tmp_path)
    if not torch.cuda.is_available():  # what loading without map_location does here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "optimizer.pt", weights_only=False)
    fresh = tiny_llama(seed=1)
    other = backend_for(fresh, "fp32", lr=1e-3)
    other.load_state([tmp_path])
    state = other.optimizer.state_dict()["state"]
    saved = backend.optimizer.state_dict()["state"]
    assert state and all(v["exp_avg"].device.type == "cpu" for v in state.values())
    for k, v in saved.items():
        assert torch.equal(state[k]["exp_avg"], v["exp_avg"])
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_gradient_buckets_respect_the_size_and_dtype() -> None:
    params = [torch.nn.Parameter(torch.zeros(n, dtype=d)) for n, d in
              [(10, torch.float32), (20, torch.float32), (5, torch.float32), (100, torch.float32),
               (3, torch.bfloat16), (4, torch.bfloat16)]]
    for p in params:
        p.grad = torch.zeros_like(p)
    buckets = gradient_buckets(params, bucket_bytes=128)
    assert [[p.numel() for p in b] for b in buckets] == [[10, 20], [5], [100], [3, 4]]
    assert [p for b in buckets for p in b] == params
    assert len(gradient_buckets(params, bucket_bytes=1 << 30)) == 2  # one per dtype


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reduce_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for name, bucket in (("flat", 1 << 40), ("bucketed", 4096)):
        model = tiny_llama()
        gen = torch.Generator().manual_seed(100 + rank)
        for i, p in enumerate(model.parameters()):
            if rank == 1 and i == 3:
                continue  # a parameter without a gradient on one rank counts as zero there
            p.grad = torch.randn(p.shape, generator=gen)
        all_reduce_gradients(model, bucket_bytes=bucket)
        results[name] = [p.grad.clone() for p in model.parameters()]
    torch.save(results, f"{out}-{rank}.pt")
    dist.destroy_process_group()


def test_bucketed_all_reduce_equals_one_flat_all_reduce(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = str(tmp_path / "grads")
    mp.spawn(_reduce_worker, args=(_free_port(), out), nprocs=2, join=True)
    r0, r1 = torch.load(f"{out}-0.pt"), torch.load(f"{out}-1.pt")
    model = tiny_llama()
    sizes = [p.numel() * 4 for p in model.parameters()]
    assert sum(sizes) > 10 * 4096  # many buckets
    expected = []
    g0, g1 = torch.Generator().manual_seed(100), torch.Generator().manual_seed(101)
    for i, p in enumerate(model.parameters()):
        a = torch.randn(p.shape, generator=g0)
        b = torch.zeros(p.shape) if i == 3 else torch.randn(p.shape, generator=g1)
        expected.append((a + b) / 2)
    for grads in (r0["flat"], r0["bucketed"], r1["bucketed"]):
        for g, e in zip(grads, expected, strict=True):
            assert torch.allclose(g, e, atol=1e-6)
    for a, b in zip(r0["flat"], r0["bucketed"], strict=True):
        assert torch.equal(a, b)


def test_zero3_rollout_sync_gathers_one_block_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deepspeed = pytest.importorskip("deepspeed")
    from scoreops.api import parse_resource
    from scoreops.models import load_model
    from scoreops.rollout import HFEngine
    from scoreops.training.backend import make_backend
    from testkit.digits import build_digit_model, scorerun_doc

    model_dir = build_digit_model(tmp_path / "model")
    doc = scorerun_doc({
        "model": {"uri": str(model_dir)},
        "dataset": {"train": {"uri": str(tmp_path / "x.jsonl")}, "evalSize": 0},
        "algorithm": {"name": "grpo", "grpo": {"steps": 1}},
        "rollout": {"turns": 1, "samplesPerPrompt": 2},
        "optim": {"batchSize": 2, "microBatchSize": 2},
        "resources": {"precision": "fp32", "deepspeed": "zero3"},
        "output": {"uri": str(tmp_path / "out")},
    })
    spec = parse_resource(doc).spec
    policy, tok = load_model(str(model_dir))
    full = {k: v.clone() for k, v in policy.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    backend = make_backend(spec, policy, opt, sched, device=torch.device("cpu"))
    try:
        copy, _ = load_model(str(model_dir))
        with torch.no_grad():
            for p in copy.parameters():
                p.zero_()
        engine = HFEngine(copy, tok)
        gathers: list[int] = []
        real = deepspeed.zero.GatheredParameters

        def spy(params: Any, *args: Any, **kwargs: Any) -> Any:
            params = list(params)
            gathers.append(sum(int(getattr(p, "ds_numel", p.numel())) for p in params))
            return real(params, *args, **kwargs)

        monkeypatch.setattr(deepspeed.zero, "GatheredParameters", spy)
        backend.sync_rollout(engine)
        from scoreops.training.deepspeed import sync_groups

        total = sum(int(getattr(p, "ds_numel", p.numel())) for p in policy.parameters())
        assert sum(gathers) == total  # every parameter once
        # one gather per decoder layer (the model's own blocks), then one for the rest
        # (embeddings, final norm, head): never the whole model at once
        groups = sync_groups(policy)
        assert len(groups) == len(policy.model.layers) + 1 > 2
        assert len(gathers) == len(groups) and max(gathers) < total
        for k, v in copy.state_dict().items():
            assert torch.equal(v, full[k]), k
    finally:
        backend.close()
