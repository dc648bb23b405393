"""RETIRED: `models/peft_llm_integration.py` (tombstone; importing it raises ImportError).

What it was
    An ad-hoc PEFT/LoRA integration: it loaded a base causal language model, loaded LoRA
    adapters with `torch.load` of `.bin`/`.pt` files, and generated for one request at a
    time - no batching, no token streaming, no deadlines or cancellation.

Why it was retired
    - No serving contract: an in-process function call, so every user embedded the model
      (and its GPU memory) in their own process.
    - Pickle loading of untrusted weights: `torch.load` on adapter files executes code
      from them.
    - No batching: requests ran one after another, so throughput was one sequence per
      forward pass.
    - No tests.
    - Hard-coded sites: model and adapter paths lived in the source.

What replaces it
    - galactic's Generation service (`galactic.v1.Generation`: `Generate` streams tokens,
      `Session` multiplexes many requests over one stream) with continuous batching,
      per-request LoRA adapters, deadlines and cancellation, served by `galacticd`;
    - `engines/llm`: the engine (scheduler, KV cache, adapters loaded from safetensors);
    - `training/llm`: LoRA fine-tuning as a LightningModule, exporting a PEFT adapter
      directory (`adapter_config.json` + `adapter_model.safetensors`);
    - the `galactic_client` library: `Client(...).generate(...)`, `.session()`,
      `.load_adapter(...)`, and the `galactic` command.

See archive/MIGRATION.md for the step-by-step move.
"""

raise ImportError(
    "models/peft_llm_integration.py was retired; use galactic's Generation service "
    "(engines/llm, training/llm) through galactic_client: galactic_client.Client(target)"
    ".generate(prompt, adapter=...) and Client.load_adapter(...). See archive/MIGRATION.md."
)
