"""The models under test: a generation engine per ``spec.models`` entry (local weights through
transformers or vLLM, or an OpenAI-compatible endpoint), and the moa agents' engines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scoreops.api.common import TORCH_DTYPE

if TYPE_CHECKING:
    from scoreops.api import EvalSuiteSpec
    from scoreops.api.evalsuite import EvalModel
    from scoreops.rollout import RolloutEngine

__all__ = ["LoadedModel", "load_agent_models", "load_eval_model", "load_local", "score_run_uri"]

#: the precision local weights are evaluated in, per device
EVAL_PRECISION: dict[str, str] = {"cpu": "fp32", "cuda": "bf16"}


def score_run_uri(name: str) -> str:
    """Where an in-process ScoreRun named ``name`` leaves its final weights."""
    return f"store://runs/{name}/final"


@dataclass
class LoadedModel:
    """A model under test: its generation engine and, for local weights, model + tokenizer
    (log-likelihood scoring needs the logits)."""

    name: str
    engine: RolloutEngine
    model: Any = None
    tokenizer: Any = None
    source: str = ""
    dtype: str | None = None  # set where ``model`` is loaded on first use (vLLM generates)
    device: str | None = None

    def ensure_model(self) -> Any:
        """The transformers model, loaded from ``source`` on first use if not yet loaded."""
        if self.model is None and self.dtype is not None:
            from scoreops.models import load_model

            self.model, _ = load_model(self.source, dtype=self.dtype, device=self.device)
        return self.model

    def close(self) -> None:
        self.engine.close()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _hf_engine(uri: str, name: str, batch_size: int, device: str, dtype: str,
               max_model_len: int | None) -> LoadedModel:
    """transformers generates, and the same model scores log-likelihoods."""
    from scoreops.models import load_model
    from scoreops.rollout import HFEngine

    model, tokenizer = load_model(uri, dtype=dtype, device=device)
    engine = HFEngine(model, tokenizer, device=device, max_batch_size=batch_size)
    return LoadedModel(name=name, engine=engine, model=model, tokenizer=tokenizer, source=uri)


def _vllm_engine(uri: str, name: str, batch_size: int, device: str, dtype: str,
                 max_model_len: int | None) -> LoadedModel:
    """vLLM generates; the transformers model is loaded only if a log-likelihood benchmark
    asks for logits (:meth:`LoadedModel.ensure_model`)."""
    from scoreops.models import resolve_model
    from scoreops.rollout.vllm import VLLMEngine

    engine = VLLMEngine.from_path(str(resolve_model(uri)), dtype=dtype,
                                  max_model_len=max_model_len, kv_sequences=batch_size)
    return LoadedModel(name=name, engine=engine, tokenizer=engine.tokenizer, source=uri,
                       dtype=dtype, device=device)


#: ``generation.engine`` -> how local weights are loaded for it
ENGINE_LOADERS: dict[str, Callable[..., LoadedModel]] = {"hf": _hf_engine, "vllm": _vllm_engine}


def load_local(uri: str, name: str, batch_size: int, engine_kind: str,
               max_model_len: int | None = None) -> LoadedModel:
    """Local weights at ``uri`` behind the ``engine_kind`` engine, in the device's precision."""
    device = _device()
    dtype = TORCH_DTYPE[EVAL_PRECISION[device]]
    return ENGINE_LOADERS[engine_kind](uri, name, batch_size, device, dtype, max_model_len)


def load_eval_model(ref: EvalModel, spec: EvalSuiteSpec) -> LoadedModel:
    """The engine for one ``spec.models`` entry."""
    if ref.endpoint:
        from scoreops.strategies.remote import OpenAIEngine

        return LoadedModel(name=ref.name, engine=OpenAIEngine(
            ref.endpoint, max_concurrency=spec.generation.batch_size), source=ref.endpoint)
    uri = ref.uri if ref.uri else score_run_uri(str(ref.score_run))
    return load_local(uri, ref.name, spec.generation.batch_size, spec.generation.engine)


def load_agent_models(spec: EvalSuiteSpec) -> list[LoadedModel]:
    """The engines of ``strategy.agentModels`` for a strategy that uses them, else none."""
    from scoreops.strategies import get_strategy

    strategy = spec.strategy
    if not (get_strategy(strategy.name).uses_agent_models and strategy.agent_models):
        return []
    return [load_local(uri, f"agent{i}", spec.generation.batch_size, spec.generation.engine)
            for i, uri in enumerate(strategy.agent_models)]
