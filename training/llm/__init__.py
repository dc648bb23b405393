"""Training for the LLM engine: tokenizer, demo model, LoRA fine-tuning (Lightning)."""
