"""`galactic-train lora`: data, config, Lightning training, export, and what the engine serves.

Everything runs on tiny models built in the test (conftest's `tiny_dir`) on the CPU. The
multi-process (DDP over gloo) and resume tests run the real CLI in subprocesses.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.errors import FailedPrecondition
from engines.llm.identity import METADATA_FILE, model_content_hash
from engines.llm.types import GenerationRequest, SamplingParams
from llm_helpers import collect, make_config

REPO = Path(__file__).resolve().parents[2]

# Made-up words the base model cannot know: the adapter must learn them.
FACTS = {
    "zorblat": " a blue fruit",
    "quintaro": " a small moon",
    "vexilune": " a warm wind",
    "plomdrick": " an old ship",
    "snarfle": " a red stone",
    "trevolux": " a quiet bell",
}


def write_facts(path: Path, repeats: int = 8) -> Path:
    rows = [{"prompt": f"Define {w}:", "completion": c} for w, c in FACTS.items()] * repeats
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def training_config(**overrides):
    from training import config as training_config

    base = {"max_steps": 40, "batch_size": 8, "lr": 5e-3, "warmup_steps": 2, "val_fraction": 0.15,
            "lora.rank": 8, "lora.alpha": 16, "lora.dropout": 0.0, "log_every_n_steps": 1}
    return training_config.load(None, env={}, overrides={**base, **overrides})


LLAMA_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def targeted(adapter: Path) -> list[str]:
    """The module names PEFT wrote into adapter_config.json (full paths or suffixes)."""
    return json.loads((adapter / "adapter_config.json").read_text())["target_modules"]


def checkpoint_step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


# ---- data ------------------------------------------------------------------------------


def test_data_masks_the_prompt_and_learns_the_completion_and_eos(tiny_dir):
    from transformers import AutoTokenizer

    from training.llm.data import IGNORE, tokenize

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ex, cut = tokenize({"prompt": "Define zorblat:", "completion": " a blue fruit"}, tok, 1, 64)
    prompt = tok("Define zorblat:", add_special_tokens=False)["input_ids"]
    completion = tok(" a blue fruit", add_special_tokens=False)["input_ids"]
    assert not cut
    assert list(ex.input_ids) == prompt + completion + [tok.eos_token_id]
    assert list(ex.labels) == [IGNORE] * len(prompt) + completion + [tok.eos_token_id]


def test_data_chat_messages_learn_assistant_turns_only(tiny_dir):
    from transformers import AutoTokenizer

    from training.llm.data import IGNORE, tokenize

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Farewell."}]
    ex, _ = tokenize({"messages": msgs}, tok, 1, 256)
    learned = tok.decode([t for t in ex.labels if t != IGNORE and t != tok.eos_token_id])
    assert "Hello." in learned and "Farewell." in learned
    assert "Hi" not in learned and "Be brief" not in learned and "user" not in learned
    assert sum(1 for t in ex.labels if t == tok.eos_token_id) == 2  # each assistant turn ends
    # The tokens are the chat template's rendering of the whole conversation.
    assert tok.decode(ex.input_ids).replace(tok.eos_token, "") == tok.apply_chat_template(msgs, tokenize=False)


@pytest.mark.parametrize("line, needle", [
    ('{"prompt": "a"}', '"completion" must be a string'),
    ('{"prompt": "a", "completion": ""}', "empty"),
    ('not json', "Expecting value"),
    ('["a list"]', "expected a JSON object"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "messages[0]"),
    ('{"text": "a", "prompt": "b", "completion": "c"}', "exactly one of"),
])
def test_data_bad_line_names_its_number(tmp_path, line, needle):
    from training.llm.data import DataError, read_records

    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n\n' + line + "\n")
    with pytest.raises(DataError) as exc:
        read_records(path)
    assert f"{path}:3:" in str(exc.value) and needle in str(exc.value)


def test_data_split_is_seeded_and_disjoint(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from training.llm.data import SFTDataModule

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(20)))
    lines = []
    for _ in range(2):
        dm = SFTDataModule(path, tok, batch_size=4, max_length=32, val_fraction=0.25, seed=3)
        dm.prepare()
        lines.append(([e.line for e in dm.train], [e.line for e in dm.val]))
    (train, val), again = lines
    assert (train, val) == again and len(val) == 5 and not set(train) & set(val)
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


# ---- config ----------------------------------------------------------------------------


def test_training_config_file_env_and_flags_in_that_order(tmp_path):
    from engines.config import ConfigError
    from training import config as training_config

    path = tmp_path / "galactic.toml"
    path.write_text('[llm]\nname = "ignored by training"\n[training]\nmax_steps = 7\nbatch_size = 3\n'
                    '[training.lora]\nrank = 2\n')
    cfg = training_config.load(path, env={"GALACTIC_TRAINING__BATCH_SIZE": "5"}, overrides={"lora.rank": 4, "epochs": None})
    assert (cfg.max_steps, cfg.batch_size, cfg.lora.rank, cfg.epochs) == (7, 5, 4, 3)
    path.write_text("[training]\nmax_stepz = 7\n")
    with pytest.raises(ConfigError) as exc:
        training_config.load(path, env={})
    assert exc.value.key == "training.max_stepz"
    with pytest.raises(ConfigError) as exc:
        training_config.load(None, env={}, overrides={"strategy": "horovod"})
    assert exc.value.key == "training.strategy"


def test_training_config_defaults_and_refusals_name_the_field():
    from engines.config import ConfigError
    from training import config as training_config

    cfg = training_config.load(None, env={})
    assert (cfg.max_steps, cfg.epochs, cfg.lora.target_modules) == (0, 3, ("all-linear",))
    for overrides, key in [({"max_steps": -1}, "training.max_steps"),
                           ({"lora.target_modules": ["all-linear", "q_proj"]}, "training.lora.target_modules")]:
        with pytest.raises(ConfigError) as exc:
            training_config.load(None, env={}, overrides=overrides)
        assert exc.value.key == key


@pytest.mark.parametrize("overrides, examples, plan", [
    # max_steps beyond what the epochs hold: max_steps wins, epochs unbounded.
    ({"max_steps": 7, "epochs": 1, "batch_size": 4, "accumulate_grad_batches": 2}, 12, (7, None, 3, 2)),
    # no max_steps: epochs decide; an epoch's remainder batch still steps the optimizer.
    ({"max_steps": 0, "epochs": 3, "batch_size": 4, "accumulate_grad_batches": 2}, 12, (6, 3, 3, 2)),
    # two processes split each epoch's rows (the sampler pads to equal shares).
    ({"max_steps": 0, "epochs": 2, "batch_size": 4, "devices": 2}, 17, (6, 2, 3, 3)),
])
def test_plan_counts_optimizer_steps(overrides, examples, plan):
    from training.llm.lora import plan_run

    got = plan_run(training_config(**overrides), examples)
    assert (got.steps, got.epochs, got.batches_per_epoch, got.steps_per_epoch) == plan


def test_daemon_config_accepts_the_training_section(tmp_path):
    from daemon import config as daemon_config

    path = tmp_path / "galactic.toml"
    path.write_text("[training]\nmax_steps = 7\n[llm]\nname = \"m\"\n[coordination]\nenabled = false\n")
    assert "llm" in daemon_config.load(path).engines


def test_training_config_print_default_parses_as_the_defaults():
    from engines.config import to_mapping
    from training import config as training_config

    out = subprocess.run([sys.executable, "-m", "training.cli", "config", "--print-default"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    import tomllib

    assert tomllib.loads(out)["training"] == to_mapping(training_config.TrainingConfig())


# ---- host checks -----------------------------------------------------------------------


def test_qlora_and_fsdp_refused_without_cuda_before_any_work():
    from training.llm.lora import TrainingError, check_host

    with pytest.raises(TrainingError, match="no CUDA device"):
        check_host(training_config(quantize="nf4"), cuda_available=False)
    with pytest.raises(TrainingError, match="use ddp"):
        check_host(training_config(strategy="fsdp"), cuda_available=False)
    check_host(training_config(quantize="nf4"), cuda_available=True)


def test_cli_reports_a_bad_data_line_and_exits_2(tiny_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3, "completion": "b"}\n')
    proc = subprocess.run([sys.executable, "-m", "training.cli", "lora", "--base", str(tiny_dir), "--data", str(data),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and f"{data}:2:" in proc.stderr and '"prompt" must be a string' in proc.stderr
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_cli_max_steps_runs_that_many_optimizer_steps_past_the_epochs(tiny_dir, tmp_path):
    """12 examples in batches of 4, two batches a step: 2 optimizer steps an epoch, so
    `--epochs 1` alone would stop at 2; `--max-steps 7` runs 7 (3.5 epochs)."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Define {w}:", "completion": c}) + "\n"
                            for w, c in list(FACTS.items()) * 2))
    out = tmp_path / "out"
    proc = _cli("lora", "--base", str(tiny_dir), "--data", str(data), "--out", str(out), "--max-steps", "7",
                "--epochs", "1", "--batch-size", "4", "--accumulate", "2", "--val-fraction", "0",
                "--targets", "q_proj,v_proj", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = [line for line in proc.stderr.splitlines() if line.startswith("plan: ")]
    assert plan == ["plan: 7 optimizer steps (max_steps); epochs: as many as max_steps needs (3.5); "
                    "3 batches of 4 per epoch, 2 per optimizer step (2 steps per epoch); 12 training examples, 1 process"]
    assert "\tsteps=7\t" in proc.stdout
    # No periodic checkpoint falls within 7 steps, so Lightning writes last.ckpt as training ends.
    assert checkpoint_step(out / "checkpoints" / "last.ckpt") == 7
    assert json.loads((out / METADATA_FILE).read_text())["steps"] == 7
    assert sorted(targeted(out)) == ["q_proj", "v_proj"]  # --targets overrides all-linear


# ---- training, export, serving -----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """One LoRA run on the facts, exported into an adapter root."""
    from training.llm.lora import train_lora

    tmp = tmp_path_factory.mktemp("lora")
    data = write_facts(tmp / "facts.jsonl")
    root = tmp / "adapters"
    result = train_lora(tiny_dir, data, root / "facts", training_config(max_steps=60))  # default targets
    return result, root, data


def _logged(out: Path, key: str) -> list[float]:
    with open(out / "logs" / "metrics.csv") as fh:
        return [float(r[key]) for r in csv.DictReader(fh) if r.get(key)]


def test_lora_training_lowers_the_loss_and_exports_peft_files_and_metadata(trained, tiny_dir):
    result, root, data = trained
    out = root / "facts"
    assert {"adapter_model.safetensors", "adapter_config.json", METADATA_FILE} <= {p.name for p in out.iterdir()}
    losses = _logged(out, "train_loss")
    assert len(losses) >= 50 and sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["base_model_hash"] == model_content_hash(tiny_dir)
    assert meta["data_hash"].startswith("sha256:") and meta["steps"] == result.steps == 60
    assert meta["val_loss"] == pytest.approx(result.val_loss) and meta["settings"]["lora"]["rank"] == 8
    assert _logged(out, "val_loss")  # validation ran and was logged
    # 60 optimizer steps (result.steps is the Trainer's global_step) although the default
    # 3 epochs hold 18 (41 examples, batches of 8): max_steps decides.
    assert meta["settings"]["epochs"] == 3 and meta["settings"]["max_steps"] == 60


def test_lora_targets_every_linear_layer_but_the_head_by_default(trained, tiny_dir):
    from safetensors import safe_open

    _, root, _ = trained
    # PEFT writes the resolved names (full paths, or suffixes when there are many).
    assert {n.rsplit(".", 1)[-1] for n in targeted(root / "facts")} == LLAMA_LINEAR
    with safe_open(root / "facts" / "adapter_model.safetensors", "pt") as fh:
        modules = {key.split(".lora_")[0] for key in fh.keys()}
    layers = json.loads((tiny_dir / "config.json").read_text())["num_hidden_layers"]
    assert {m.rsplit(".", 1)[-1] for m in modules} == LLAMA_LINEAR and len(modules) == len(LLAMA_LINEAR) * layers


async def test_the_engine_serves_the_trained_adapter_as_peft_computes_it(trained, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engines.llm.engine import LLMEngine
    from engines.llm.module import CausalLMModule

    _, root, _ = trained  # an all-linear adapter: every projection of every layer
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), root / "facts").eval()
    eng = LLMEngine(make_config(tiny_dir, root))
    eng.load(lambda msg: None)
    assert isinstance(eng.module, CausalLMModule)  # the served model is the trained class
    await eng.start(asyncio.get_running_loop())
    try:
        await eng.load_adapter("facts", "facts")
        for word, completion in list(FACTS.items())[:3]:
            prompt = f"Define {word}:"
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                ref = peft_model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:].tolist()
            got, _, _ = await collect(eng, GenerationRequest(word, prompt=prompt, adapter="facts",
                                                             sampling=SamplingParams(max_new_tokens=6)))
            plain, _, _ = await collect(eng, GenerationRequest(word + "-base", prompt=prompt,
                                                               sampling=SamplingParams(max_new_tokens=6)))
            assert got == ref[: len(got)] and got
            assert plain != got  # the adapter changes what the engine says
    finally:
        await eng.stop(1)


async def test_an_adapter_trained_on_another_base_is_refused_naming_both_hashes(trained, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    from engines.llm.engine import LLMEngine

    _, root, _ = trained
    # Same architecture and shapes, other weights: exactly the case that loads silently otherwise.
    other = tmp_path / "other-base"
    base_dir = Path(json.loads((root / "facts" / METADATA_FILE).read_text())["base_model_path"])
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(other)
    for f in base_dir.glob("tokenizer*"):
        shutil.copy(f, other / f.name)
    foreign = root / "foreign"  # the same adapter without our metadata
    shutil.copytree(root / "facts", foreign, ignore=shutil.ignore_patterns(METADATA_FILE, "checkpoints", "logs"))
    eng = LLMEngine(make_config(other, root))
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        with pytest.raises(FailedPrecondition) as exc:
            await eng.load_adapter("facts", "facts")
        assert exc.value.field == "path"
        assert model_content_hash(base_dir) in exc.value.message and model_content_hash(other) in exc.value.message
        assert (await eng.load_adapter("foreign", "foreign")).name == "foreign"  # no metadata: a warning only
    finally:
        await eng.stop(1)
    strict = make_config(other, root)
    import dataclasses

    strict = dataclasses.replace(strict, adapters=dataclasses.replace(strict.adapters, require_metadata=True))
    eng = LLMEngine(strict)
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        with pytest.raises(FailedPrecondition, match="require_metadata"):
            await eng.load_adapter("foreign", "foreign")
    finally:
        await eng.stop(1)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.slow
def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_does(tiny_dir, tmp_path):
    """Tolerance: final validation loss within 2 % (relative). An interruption mid-epoch
    restarts that epoch's data order, so the two runs see batches in a slightly other order."""
    data = write_facts(tmp_path / "facts.jsonl")
    common = ["lora", "--base", str(tiny_dir), "--data", str(data), "--max-steps", "30", "--batch-size", "8",
              "--lr", "5e-3", "--warmup-steps", "2", "--rank", "8", "--dropout", "0", "--checkpoint-every", "5"]
    whole = _cli(*common, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    first = _cli(*common, "--out", str(tmp_path / "split"), "--stop-after-steps", "12")
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "split" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "split" / "adapter_model.safetensors").exists()  # an interrupted run exports nothing
    second = _cli(*common, "--out", str(tmp_path / "split"), "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "plan: 30 optimizer steps (max_steps)" in second.stderr and "; resuming at step 12" in second.stderr
    a = json.loads((tmp_path / "whole" / METADATA_FILE).read_text())
    b = json.loads((tmp_path / "split" / METADATA_FILE).read_text())
    assert a["steps"] == b["steps"] == 30
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.02)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_rank_zero_alone_exports(tiny_dir, tmp_path):
    data = write_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "ddp"
    proc = _cli("lora", "--base", str(tiny_dir), "--data", str(data), "--out", str(out), "--strategy", "ddp",
                "--devices", "2", "--accelerator", "cpu", "--max-steps", "30", "--batch-size", "4", "--lr", "5e-3",
                "--warmup-steps", "2", "--dropout", "0", "--log-every", "2", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr  # a second process joined
    assert proc.stderr.count("plan: 30 optimizer steps (max_steps)") == 1 and "2 processes" in proc.stderr  # rank 0 says it
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["settings"]["strategy"] == "ddp" and meta["settings"]["devices"] == 2 and meta["steps"] == 30
    assert sorted(p.name for p in out.glob("adapter_*")) == ["adapter_config.json", "adapter_model.safetensors"]
    losses = _logged(out, "train_loss")
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs CUDA")
def test_qlora_nf4_trains_on_cuda_and_reports_peak_memory(tmp_path):
    """A 1B-shaped Llama built from its config, 4-bit NF4 base, LoRA in bf16."""
    from training.llm.build import llama
    from training.llm.lora import train_lora
    from training.llm.tokenizer import train_tokenizer

    base = tmp_path / "llama-1b"
    tok = train_tokenizer([" ".join(FACTS) + " ".join(FACTS.values())] * 50, vocab_size=512)
    # A 1B shape (a 32k vocabulary's embeddings padded onto the small tokenizer's).
    llama(tok, hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8,
          vocab_size=32000).to(torch.bfloat16).save_pretrained(base)
    tok.save_pretrained(base)
    torch.cuda.reset_peak_memory_stats()
    result = train_lora(base, write_facts(tmp_path / "facts.jsonl"), tmp_path / "out",
                        training_config(quantize="nf4", max_steps=20, gradient_checkpointing=True))
    peak_gb = torch.cuda.max_memory_allocated() / 1e9
    print(f"QLoRA nf4 1B: peak GPU memory {peak_gb:.2f} GB, {result.seconds:.1f} s")
    assert result.steps == 20 and (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert peak_gb < 4.0


def test_engines_never_import_training():
    import ast

    offenders = []
    for path in (REPO / "engines").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "training"]
    assert offenders == []


# ---- the embedded demo model -------------------------------------------------------------


async def test_the_shipped_demo_model_serves_at_once_and_reads_like_its_corpus():
    import re

    from engines.llm.engine import LLMEngine
    from engines.llm.loading import EMBEDDED_DIR
    from training.llm.demo import demo_texts

    import dataclasses

    vocab = {w.lower() for t in demo_texts() for w in re.findall(r"[A-Za-z]+", t)}
    eng = LLMEngine(dataclasses.replace(make_config(EMBEDDED_DIR, EMBEDDED_DIR), path="embedded"))
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        words: list[str] = []
        for prompt in ("The observatory at La Palma", "A class definition", "The import statement"):
            _, text, _ = await collect(eng, GenerationRequest(prompt, prompt=prompt,
                                                              sampling=SamplingParams(max_new_tokens=40)))
            words += re.findall(r"[A-Za-z]+", text)
    finally:
        await eng.stop(1)
    assert len(words) >= 30
    known = sum(w.lower() in vocab for w in words) / len(words)
    assert known >= 0.8, (known, " ".join(words))  # English of the Python docs, not letter soup


# 64 s on a quiet 2-core machine: run with the coordination recipe by `make test-reproduce`
# (.ci/run runs it after `make test`), which sets GALACTIC_REPRODUCE_RECIPE=1.
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GALACTIC_REPRODUCE_RECIPE"),
                    reason="re-runs the demo recipe's first steps; set GALACTIC_REPRODUCE_RECIPE=1")
def test_the_demo_recipe_reproduces_the_shipped_model(tmp_path):
    """The recipe re-run to its first recorded step (same data split, tokenizer, seed, init,
    schedule) lands on the shipped run's held-out loss there within 1 % (relative); the
    whole run takes several minutes on 2 cores, so CI checks its first 200 steps."""
    from engines.llm.loading import EMBEDDED_DIR
    from training.llm.demo import DEMO_SPEC, METADATA_FILE as DEMO_META, train_demo_model

    shipped = json.loads((EMBEDDED_DIR / DEMO_META).read_text())
    anchor = DEMO_SPEC.val_check_steps
    assert shipped["recipe"] == dataclasses_asdict(DEMO_SPEC) and shipped["steps"] == DEMO_SPEC.steps
    meta = train_demo_model(None, DEMO_SPEC, stop_at=anchor)
    assert meta["val_loss_history"][str(anchor)] == pytest.approx(shipped["val_loss_history"][str(anchor)], rel=0.01)
    # The full run kept improving past the anchor, to the loss the README states.
    assert shipped["val_loss"] < shipped["val_loss_history"][str(anchor)]


def dataclasses_asdict(obj):
    import dataclasses

    return dataclasses.asdict(obj)
