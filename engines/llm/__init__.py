"""The LLM engine: continuous batching, streaming, batched multi-LoRA.

Import `LLMEngine` from `engines.llm.engine` (it pulls in torch); this package's
`types` and `config` modules are torch-free for the daemon's validation code.
"""
