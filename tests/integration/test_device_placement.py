"""Wrong-device tensors in training, caught on a CPU-only machine.

On a GPU the policy's log-probs live on ``cuda:N`` while anything created without an explicit
``device=`` lives on the CPU; an operation mixing the two raises there and nowhere in a
CPU-only test suite. :class:`PolicyDeviceGuard` makes that visible on the CPU: a
``TorchFunctionMode`` that gives every tensor a *virtual* placement,

* **policy** — a model parameter or buffer, a tensor created or moved with an explicit
  ``device=`` equal to the policy's device (``torch.zeros(..., device=ctx.device)``,
  ``x.to(ctx.device)``, ``y.to(logp.device)``), or anything computed from a policy tensor;
* **host** — a tensor created without a device (``torch.tensor(rewards)``,
  ``torch.full((B, T), pad)``), moved with ``.cpu()`` or to the device of a host tensor
  (``x.to(mask.device)`` where ``mask`` is a host tensor: each ``Tensor.device`` object is
  remembered with the placement of the tensor it came from), or computed from host tensors
  only;

and raises, as CUDA would, when one operation takes both a policy tensor and a host tensor
with at least one dimension (zero-dimensional CPU tensors mix with CUDA tensors in PyTorch;
indexing, ``copy_`` and ``.to`` may cross devices there too). The whole run goes through it —
rollouts, every algorithm's loss, the optimiser step, checkpoints and the held-out evaluation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils.weak import WeakTensorKeyDictionary  # noqa: E402

from scoreops.api import parse_resource  # noqa: E402
from testkit.digits import build_digit_model, scorerun_doc, write_answer_items  # noqa: E402

POLICY, HOST = "policy", "host"

_FACTORIES = {
    torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty,
    torch.arange, torch.rand, torch.randn, torch.randint, torch.linspace, torch.eye,
    torch.from_numpy, torch.scalar_tensor,
}
# may legally take tensors of two devices (or no computation happens across them)
_CROSSING = {
    torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.copy_, torch.Tensor.to,
    torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.tolist, torch.Tensor.item,
    torch.Tensor.numpy, torch.Tensor.__repr__, torch.Tensor.__format__,
    torch.Tensor.data_ptr, torch.Tensor.untyped_storage, torch.Tensor.__len__,
    torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.__int__, torch.Tensor.__float__,
    torch.Tensor.element_size, torch.Tensor.numel, torch.Tensor.dim, torch.Tensor.size,
    torch.Tensor.stride, torch.Tensor.is_contiguous, torch.Tensor.__reduce_ex__,
    torch.Tensor.__deepcopy__, torch.Tensor.detach, torch.Tensor.clone,
}


class DeviceMismatch(RuntimeError):
    pass


def _tensors(obj: Any) -> Iterator[Any]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


def _device_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The explicit target device of a ``.to(...)`` call or a factory, or None."""
    if "device" in kwargs and kwargs["device"] is not None:
        d = kwargs["device"]
        return d if isinstance(d, torch.device) else torch.device(d)
    for a in args:
        if isinstance(a, torch.device):
            return a
        if isinstance(a, str):
            try:
                return torch.device(a)
            except RuntimeError:
                continue
    return None


_DEVICE_GETTER = torch.Tensor.device


class PolicyDeviceGuard(TorchFunctionMode):
    """See the module docstring. ``violations`` records every mismatch (the first raises)."""

    def __init__(self, device: Any = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        self.tags: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.violations: list[str] = []
        # id(torch.device object) -> (the object, kept alive so the id stays unique; placement
        # of the tensor whose .device it is); bounded, oldest forgotten first
        self.device_objects: OrderedDict[int, tuple[Any, str | None]] = OrderedDict()

    def placement(self, dev: Any) -> str:
        """Where an explicit ``device=`` argument puts a tensor."""
        known = self.device_objects.get(id(dev))
        if known is not None and known[0] is dev and known[1] is not None:
            return known[1]
        return POLICY if dev == self.device else HOST

    def tag(self, t: Any) -> str | None:
        if isinstance(t, torch.nn.Parameter):
            return POLICY
        return self.tags.get(t)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, torch.device):
            if getattr(func, "__self__", None) is _DEVICE_GETTER and args:
                self.device_objects[id(out)] = (out, self.tag(args[0]))
                if len(self.device_objects) > 200_000:
                    self.device_objects.popitem(last=False)
            return out
        if not isinstance(out, (torch.Tensor, list, tuple)):
            return out
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        tags = [(self.tag(t), t) for t in inputs]
        has_policy = any(g == POLICY for g, _ in tags)
        hosts = [t for g, t in tags if g == HOST and t.dim() > 0]
        if func in _FACTORIES:
            dev = _device_arg(args[1:] if func is torch.full else (), kwargs)
            new = HOST if dev is None else self.placement(dev)
        elif func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            if func is torch.Tensor.cpu:
                new = HOST
            elif func is torch.Tensor.cuda:
                new = POLICY
            else:
                dev = _device_arg(args[1:], kwargs)
                other = next((t for t in _tensors(args[1:]) if isinstance(t, torch.Tensor)), None)
                if dev is not None:
                    new = self.placement(dev)
                elif other is not None:
                    new = self.tag(other)
                else:
                    new = self.tag(args[0])
        else:
            if has_policy and hosts and func not in _CROSSING:
                name = getattr(func, "__qualname__", getattr(func, "__name__", str(func)))
                shapes = [tuple(t.shape) for t in hosts]
                msg = (f"{name} mixes policy-device tensors with host tensors of shapes "
                       f"{shapes} (on a GPU: Expected all tensors to be on the same device)")
                self.violations.append(msg)
                raise DeviceMismatch(msg)
            if func in (torch.Tensor.__getitem__,):
                new = self.tag(args[0])
            else:
                new = POLICY if has_policy else (HOST if any(g == HOST for g, _ in tags)
                                                 else None)
        if new is not None:
            for t in _tensors(out):
                if not isinstance(t, torch.nn.Parameter):
                    self.tags[t] = new
        return out


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digit_model(tmp_path_factory.mktemp("digit") / "model")


def _doc(model: Path, data: Path, out: Path, algorithm: dict[str, Any], **over: Any) -> dict:
    spec: dict[str, Any] = {
        "model": {"uri": str(model)},
        "dataset": {"train": {"uri": str(data)}, "evalSize": 4, "seed": 0, "verifier": "exact"},
        "algorithm": algorithm,
        "rollout": {"turns": 2, "samplesPerPrompt": 4, "maxNewTokens": 1, "temperature": 1.0},
        "optim": {"learningRate": 0.05, "batchSize": 2, "microBatchSize": 4,
                  "warmupRatio": 0.0, "schedule": "constant"},
        "resources": {"precision": "fp32"},
        "checkpoint": {"everySteps": 1, "keep": 1},
        "evaluation": {"enabled": True, "compareBase": True},
        "output": {"uri": str(out)},
        "seed": 0,
    }
    return scorerun_doc(spec, **over)


ALGORITHMS = {
    "score": {"name": "score", "score": {"stage1Steps": 1, "stage2Steps": 1}},
    "grpo": {"name": "grpo", "grpo": {"steps": 2, "beta": 0.01}},
    "mgrpo": {"name": "mgrpo", "mgrpo": {"steps": 2, "beta": 0.01, "variations": 2}},
    "star": {"name": "star", "star": {"rounds": 2, "stepsPerRound": 1,
                                      "externalCorrection": True}},
    "cory": {"name": "cory", "cory": {"steps": 2, "exchangeEvery": 1, "beta": 0.01,
                                      "loraRank": 2}},
}


def test_the_guard_sees_a_host_tensor_meeting_a_policy_tensor() -> None:
    lin = torch.nn.Linear(3, 2)
    with PolicyDeviceGuard("cpu"):
        y = lin(torch.ones(4, 3).to("cpu"))  # moved explicitly: fine
        y * torch.ones(4, 2, device="cpu")  # created on the policy's device: fine
        y * torch.tensor(2.0)  # a zero-dimensional CPU tensor: fine on CUDA too
        y * torch.ones(2).to(y.device)  # moved to where the policy's output is
        host = torch.ones(4, 2)
        with pytest.raises(DeviceMismatch, match="mul"):
            y * torch.tensor([1.0, 2.0])  # created without a device: cuda vs cpu on a GPU
        with pytest.raises(DeviceMismatch, match="add"):
            y + torch.ones(2).to(host.device)  # moved next to a host tensor: still the host


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_training_and_evaluation_keep_tensors_on_the_policy_device(
        digit_model: Path, tmp_path: Path, algorithm: str) -> None:
    from scoreops.training.loop import Trainer

    data = write_answer_items(tmp_path / "train.jsonl", 24)
    doc = _doc(digit_model, data, tmp_path / "out", ALGORITHMS[algorithm])
    trainer = Trainer(parse_resource(doc))
    guard = PolicyDeviceGuard("cpu")
    with guard:
        result = trainer.run_training()
    assert not guard.violations
    assert result.step == 2 and all(math.isfinite(m["loss"]) for m in result.metrics)
    if algorithm == "star":  # something was kept, so the fine-tuning loss really ran
        assert sum(m["kept"] for m in result.metrics) > 0
    assert set(result.evals) == {"base", "trained"}


def test_deepspeed_zero2_step_keeps_tensors_on_the_policy_device(
        digit_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    from scoreops.training.loop import Trainer

    data = write_answer_items(tmp_path / "train.jsonl", 24)
    doc = _doc(digit_model, data, tmp_path / "out", ALGORITHMS["score"],
               **{"resources.deepspeed": "zero2", "evaluation.compareBase": False})
    guard = PolicyDeviceGuard("cpu")
    with guard:
        result = Trainer(parse_resource(doc)).run_training()
    assert not guard.violations and result.step == 2
