"""Build the served model and tokenizer from an `LLMConfig`, from local files only.

Policy in one place: device "auto" picks CUDA when present (weights spread over all GPUs by
accelerate's `device_map="auto"`); dtype "auto" is bf16 on CUDA and fp32 on the CPU;
`int8`/`nf4` are bitsandbytes' CUDA paths, `int8-dynamic` is torch's CPU dynamic
quantization. A combination the host cannot run is refused with what to choose instead,
at load time, so the daemon exits naming it rather than failing on the first request.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from engines.config import ConfigError
from engines.llm.config import LLMConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" | "cuda"
    dtype: torch.dtype
    attention: str  # transformers' attn_implementation


def resolve_attention(config: LLMConfig, device: str) -> str:
    """auto: eager on CUDA (see LLMConfig.attention; the measurement: benchmarks/results/HISTORY.md), sdpa on the CPU."""
    if config.attention != "auto":
        return config.attention
    return "eager" if device == "cuda" else "sdpa"


def resolve_placement(config: LLMConfig, cuda_available: bool | None = None) -> Placement:
    """Decide device and dtype, refusing what this host cannot run."""
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if config.device == "cuda" and not has_cuda:
        raise ConfigError("llm.device", "cuda requested but no CUDA device is visible; choose 'cpu' or 'auto'")
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and has_cuda) else "cpu"
    if config.quantization in ("int8", "nf4") and device != "cuda":
        raise ConfigError(
            "llm.quantization",
            f"{config.quantization} uses bitsandbytes' CUDA kernels and this host has no CUDA device; "
            "choose quantization = 'int8-dynamic' (CPU) or 'none'",
        )
    if config.quantization == "int8-dynamic" and device != "cpu":
        raise ConfigError("llm.quantization", "int8-dynamic is CPU-only; on CUDA choose 'int8' or 'nf4'")
    if config.dtype != "auto":
        dtype = _DTYPES[config.dtype]
    else:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if config.quantization == "int8-dynamic":
        dtype = torch.float32  # dynamic quantization computes activations in fp32
    return Placement(device=device, dtype=dtype, attention=resolve_attention(config, device))


# The demo model ships inside the engine package (a few MB of safetensors and a tokenizer,
# made by `galactic-train demo-model`), so `path = "embedded"` serves at once on any host.
EMBEDDED_DIR = Path(__file__).parent / "embedded" / "demo-llm"


def resolve_model_dir(config: LLMConfig, progress: Callable[[str], None]) -> Path:
    if config.path == "embedded":
        if not (EMBEDDED_DIR / "model.safetensors").is_file():
            raise ConfigError("llm.path", f"the embedded demo model is missing from {EMBEDDED_DIR}; "
                              "rebuild it with `galactic-train demo-model --out` that dir")
        return EMBEDDED_DIR
    path = Path(config.path).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError("llm.path", f"{path} is not a Hugging Face model dir (no config.json)")
    return path


def load_tokenizer(config: LLMConfig, model_dir: Path, progress: Callable[[str], None]) -> Any:
    from transformers import AutoTokenizer

    progress(f"loading tokenizer from {model_dir}")
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=config.trust_remote_code)


def load_model_and_tokenizer(
    config: LLMConfig, progress: Callable[[str], None]
) -> tuple[Any, Any, Placement, Path]:
    """Return (model in eval mode, tokenizer, placement, model dir)."""
    from transformers import AutoModelForCausalLM

    placement = resolve_placement(config)
    model_dir = resolve_model_dir(config, progress)
    tokenizer = load_tokenizer(config, model_dir, progress)
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": config.trust_remote_code,
        "dtype": placement.dtype,
        "attn_implementation": placement.attention,
        # Weights from safetensors only: a pytorch_model.bin would be unpickled (code).
        "use_safetensors": True,
    }
    if placement.device == "cuda":
        kwargs["device_map"] = "auto"
        if config.quantization in ("int8", "nf4"):
            from transformers import BitsAndBytesConfig

            if config.quantization == "int8":
                kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
            else:
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16,
                )
    progress(f"loading weights from {model_dir} ({placement.device}, {placement.dtype}, {config.quantization})")
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.eval()
    if config.quantization == "int8-dynamic":
        progress("quantizing Linear layers to int8 (dynamic)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice; still the fastest CPU path
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model, tokenizer, placement, model_dir


def input_device(model: Any) -> torch.device:
    """Where input ids must live (the embedding's device under a multi-GPU device_map)."""
    return model.get_input_embeddings().weight.device
