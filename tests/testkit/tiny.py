"""A tiny random Llama with SmolLM2's real tokenizer and chat template, for fast tests.

0.8M parameters: loads in about 0.1 s and generates a few hundred tokens a second on one CPU
core. Its outputs are gibberish, but its tokenizer, chat template, EOS handling, padding and
shapes are those of the real small model, which is what rollout and training code exercises.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_tiny_model"]


def build_tiny_model(out_dir: str | Path, seed: int = 0, *, head_dim: int | None = None) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` + SmolLM2's tokenizer to ``out_dir``.

    The same seed gives the same weights. Returns ``out_dir`` (loadable with
    :func:`scoreops.models.load_model` or ``from_pretrained``). ``head_dim`` overrides the
    attention head size (8 by default; vLLM's CPU attention needs 32 or more).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from scoreops.models import load_smollm2_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_smollm2_tokenizer()
    config = LlamaConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **({"head_dim": head_dim} if head_dim else {}),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
