"""Llama models built from a config around one of our tokenizers: the embedded demo model,
the test and benchmark models. Nothing is downloaded; the weights are random until trained."""

from __future__ import annotations

from typing import Any


def llama(tok: Any, *, hidden: int, layers: int, heads: int, kv_heads: int | None = None,
          intermediate: int | None = None, max_positions: int = 2048, **config: Any):
    """A LlamaForCausalLM sized by the arguments, its vocabulary and special tokens taken
    from `tok`; `config` sets other LlamaConfig fields or overrides these (initializer_range,
    tie_word_embeddings, a padded vocab_size, ...). Seed torch first for repeatable weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or hidden * 4,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    cfg = LlamaConfig(**{**fields, **config})  # e.g. a vocabulary padded past the tokenizer's
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model
