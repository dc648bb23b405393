"""Grammar libraries compared: llguidance, outlines-core and xgrammar on our tokenizers and schemas.

    python benchmarks/grammar_libraries.py [--quick] [--walks 5] [--max-steps 96]
        [--tokenizers demo,tiny,bpe32k] [--libraries llguidance,outlines-core,xgrammar]
        [--wheels DIR] [--json PATH]

Run it with a Python where the candidates are installed (not the daemon's venv, which holds
llguidance only; see "Structured output" in engines/llm/README.md for the venv used). A
library that does not import is reported as missing and the others still run.

Each (library, tokenizer) pair runs in a fresh child process, so import time and memory are
its own. In the child, timed with `time.perf_counter` on one thread:

* init: the library's tokenizer object from the Hugging Face tokenizer (llguidance's
  `LLTokenizer`; xgrammar's `TokenizerInfo` + `GrammarCompiler`; outlines-core's
  `Vocabulary`, built here in Python from the byte-level token strings, since its own
  `from_pretrained` reads the hub: byte-level BPE tokenizers only, as all of ours are);
* compile: every schema of tests/llm/test_llm_structured.py (read from that file, so the two
  never drift), compact JSON (no whitespace between tokens, as the engine asks for); a
  schema the library refuses counts as unsupported, with its reason;
* first mask: a fresh matcher's first mask, the slowest of the schema's walks (llguidance
  compiles lazily, outlines-core and xgrammar up front: compile + first mask is what a
  request waits for before its first token);
* mask per step: a constrained random walk per schema (`--walks` seeds): from each mask a
  random allowed token (EOS taken with probability 0.3 when the grammar allows it) until
  the grammar completes or `--max-steps`; each mask is written into an int32 bitmask
  tensor (the form all three hand to `apply_token_bitmask_inplace`), the advance is timed
  apart. Completed walks are decoded and validated with `jsonschema` (formats checked),
  so a library that accepts a keyword but does not enforce it shows up as invalid;
* edge keywords (EDGE below: uniqueItems, multipleOf, not, if/then/else, ...): refused, or
  compiled and then either broken by a completed walk (the keyword is dropped) or not
  ("clean": no violation seen in the walks, which is evidence, not proof, of enforcement);
* memory: the child's resident set (VmRSS) before the library is imported, after init,
  after all compiles; peak (VmHWM) at the end.

Tokenizers: `demo` is the embedded demo model's (vocab 2048), `tiny` the test suite's
(byte-level BPE, vocab 384, trained here as tests/llm/conftest.py does), `bpe32k` a
byte-level BPE of 32,000 trained here on the standard library's sources, closer to a real
model's vocabulary (masks cost in proportion to it). Install footprint: the installed
files of each library and of every runtime requirement it declares that the daemon's
lock (requirements/lock.txt) does not already hold; with `--wheels DIR`, the sizes of the
wheels found there (e.g. `pip download --no-deps -d DIR llguidance outlines-core xgrammar
triton`), triton included though a CPU install can skip it.

The host is shared: absolute figures are noisy, comparisons within one run hold better.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("llguidance", "outlines-core", "xgrammar")
MODULES = {"llguidance": "llguidance", "outlines-core": "outlines_core", "xgrammar": "xgrammar"}
TOKENIZERS = ("demo", "tiny", "bpe32k")
EOS_PROBABILITY = 0.3


# ---------------------------------------------------------------- inputs shared with the tests

def _assignment(path: Path, name: str) -> object:
    """The value of a module-level `name = <literal>` in `path`, evaluated without importing
    the module (the tests import pytest and the engine, which this venv need not have)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return eval(compile(ast.Expression(node.value), str(path), "eval"), {"__builtins__": {}})  # noqa: S307
    raise LookupError(f"{name} not found in {path}")


# Keywords past the tests' schemas, where the libraries part ways: each either refuses the
# schema (the engine then answers INVALID_ARGUMENT) or compiles it, and then its completed
# walks show whether it enforces the keyword or drops it. Timings leave these out (they are
# not the same set for every library).
EDGE = {
    "unique_items": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": True, "maxItems": 3},
    "multiple_of": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100},
    "exclusive_bounds": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "pattern_properties": {"type": "object", "patternProperties": {"^x_[a-z]$": {"type": "integer"}},
                           "additionalProperties": False, "maxProperties": 2},
    "min_max_properties": {"type": "object", "additionalProperties": {"type": "boolean"},
                           "minProperties": 1, "maxProperties": 2},
    "not": {"type": "integer", "minimum": 0, "maximum": 5, "not": {"const": 3}},
    "all_of": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 3}},
                          "required": ["a"]},
                         {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
    "if_then_else": {"type": "object", "properties": {"kind": {"enum": ["n", "s"]}, "v": {}}, "required": ["kind", "v"],
                     "additionalProperties": False, "if": {"properties": {"kind": {"const": "n"}}},
                     "then": {"properties": {"v": {"type": "integer"}}}, "else": {"properties": {"v": {"type": "string"}}}},
    "dependent_required": {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}},
                           "additionalProperties": False, "dependentRequired": {"a": ["b"]}},
    "recursive_ref": {"$defs": {"n": {"type": "object", "properties": {
        "v": {"type": "integer", "minimum": 0, "maximum": 9}, "kids": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/n"}}},
        "required": ["v", "kids"], "additionalProperties": False}}, "$ref": "#/$defs/n"},
    "format_date_time": {"type": "string", "format": "date-time"},
    "format_email": {"type": "string", "format": "email"},
}


def schemas() -> dict[str, dict]:
    """The tests' schemas by name, then EDGE's as `edge:<name>`."""
    tests = _assignment(ROOT / "tests/llm/test_llm_structured.py", "SCHEMAS")
    return {**tests, **{f"edge:{k}": v for k, v in EDGE.items()}}  # type: ignore[dict-item]


def build_tokenizers(names: list[str], out: Path) -> dict[str, str]:
    """Each tokenizer saved as a Hugging Face directory under `out`; name -> path."""
    from training.llm.tokenizer import train_tokenizer

    dirs = {}
    for name in names:
        if name == "demo":
            dirs[name] = str(ROOT / "engines/llm/embedded/demo-llm")
            continue
        if name == "tiny":  # exactly tests/llm/conftest.py's tiny_dir tokenizer
            import pydoc_data.topics

            corpus = _assignment(ROOT / "tests/llm/conftest.py", "CORPUS")
            tok = train_tokenizer(list(corpus) + list(pydoc_data.topics.topics.values())[:40], vocab_size=384)
        elif name == "bpe32k":
            stdlib = Path(os.__file__).parent
            texts = [p.read_text(errors="replace") for p in sorted(stdlib.rglob("*.py"))
                     if "site-packages" not in p.parts][:1500]
            tok = train_tokenizer(texts, vocab_size=32000)
        else:
            raise SystemExit(f"unknown tokenizer {name!r}; one of {', '.join(TOKENIZERS)}")
        dirs[name] = str(out / name)
        tok.save_pretrained(dirs[name])
    return dirs


# ---------------------------------------------------------------- install footprint

def _dist_bytes(dist) -> int:
    total = 0
    for f in dist.files or []:
        try:
            total += dist.locate_file(f).stat().st_size
        except OSError:
            pass
    return total


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def footprint(library: str, wheels: Path | None) -> dict:
    """Installed size of the library and of the runtime requirements it adds to the daemon's."""
    from importlib import metadata

    from packaging.requirements import Requirement

    locked = {_norm(line.split("==")[0]) for line in (ROOT / "requirements/lock.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    try:
        dist = metadata.distribution(library)
    except metadata.PackageNotFoundError:
        return {"installed": False}
    out = {"installed": True, "version": dist.version, "installed_bytes": _dist_bytes(dist), "requires": []}
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra (test, metal) or another platform's
        row = {"name": req.name, "in_daemon_lock": _norm(req.name) in locked}
        try:
            dep = metadata.distribution(req.name)
            row.update(installed=True, version=dep.version, installed_bytes=_dist_bytes(dep))
        except metadata.PackageNotFoundError:
            row.update(installed=False)
        out["requires"].append(row)
    out["added_bytes_installed"] = out["installed_bytes"] + sum(
        r.get("installed_bytes", 0) for r in out["requires"] if not r["in_daemon_lock"])
    out["not_installed_requires"] = [r["name"] for r in out["requires"] if not r["installed"]]
    if wheels is not None:
        out["wheels"] = {}
        for name in [library] + [r["name"] for r in out["requires"] if not r["in_daemon_lock"]]:
            stem = re.sub(r"[-.]+", "_", name).lower()
            found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(stem + "-"))
            if found:
                out["wheels"][name] = {"file": found[-1].name, "bytes": found[-1].stat().st_size}
    return out


# ---------------------------------------------------------------- one library in a child process

def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes (the inverse of `bytes_to_unicode`)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Lib:
    """One library behind the three calls the walk needs."""

    def __init__(self, tok, eos: int, vocab: int) -> None: ...
    def compile(self, schema: dict): ...  # raises on a refused schema
    def matcher(self, compiled): ...
    def fill(self, matcher, bitmask) -> None: ...  # next-token mask into (1, ceil(V/32)) int32
    def advance(self, matcher, token: int) -> bool: ...  # False if refused
    def done(self, matcher) -> bool: ...


class LLGuidance(Lib):
    def __init__(self, tok, eos, vocab):
        import llguidance
        import llguidance.hf

        # Not llguidance.torch: its module-level torch.compile imports dynamo (seconds, tens
        # of MB); the pointer call below is what its fill_next_token_bitmask does.
        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab, eos_token=eos)

    def compile(self, schema):
        m = self.llg.LLMatcher(self.tok, self.llg.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False}), log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def matcher(self, compiled):
        return compiled.deep_copy()

    def fill(self, m, bitmask):
        m.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.numel() * bitmask.element_size())

    def advance(self, m, token):
        return m.consume_token(token)

    def done(self, m):
        return m.is_stopped()


class OutlinesCore(Lib):
    def __init__(self, tok, eos, vocab):
        import outlines_core

        self.oc = outlines_core
        dec, special = _byte_decoder(), set(tok.all_special_ids)
        tokens: dict[bytes, list[int]] = {}
        for text, i in tok.get_vocab().items():
            if i in special:
                continue  # outlines adds EOS itself; the other specials are never allowed
            if not all(ch in dec for ch in text):
                raise SystemExit(f"token {text!r}: not a byte-level BPE vocabulary, which this adapter needs")
            tokens.setdefault(bytes(dec[ch] for ch in text), []).append(i)
        self.vocab = outlines_core.Vocabulary(eos, tokens)

    def compile(self, schema):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
        return self.oc.Index(regex, self.vocab)

    def matcher(self, compiled):
        return self.oc.Guide(compiled)

    def fill(self, g, bitmask):
        g.write_mask_into(bitmask.data_ptr(), bitmask.numel(), bitmask.element_size())

    def advance(self, g, token):
        try:
            g.advance(token, return_tokens=False)
            return True
        except ValueError:
            return False

    def done(self, g):
        return g.is_finished()


class XGrammar(Lib):
    def __init__(self, tok, eos, vocab):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=[eos])
        # One thread, as the others compile; no cache, so every schema compiles.
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, m, bitmask):
        m.fill_next_token_bitmask(bitmask, 0)

    def advance(self, m, token):
        return m.accept_token(token)

    def done(self, m):
        return m.is_terminated()


CLASSES = {"llguidance": LLGuidance, "outlines-core": OutlinesCore, "xgrammar": XGrammar}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def child(library: str, tokenizer_dir: str, walks: int, max_steps: int) -> dict:
    import importlib

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos, vocab = tok.eos_token_id, len(tok)
    out: dict = {"vocab": vocab, "rss_mb": {"baseline": _rss_mb()}}
    t = time.perf_counter()
    try:
        module = importlib.import_module(MODULES[library])
    except ImportError as exc:
        return {"missing": f"{type(exc).__name__}: {exc}"}
    out["import_s"] = time.perf_counter() - t
    from importlib import metadata

    out["version"] = metadata.version(library)
    t = time.perf_counter()
    lib = CLASSES[library](tok, eos, vocab)
    out["init_s"] = time.perf_counter() - t
    out["rss_mb"]["after_init"] = _rss_mb()
    del module

    try:
        import jsonschema

        check = lambda s, v: jsonschema.validate(v, s, format_checker=jsonschema.FormatChecker())  # noqa: E731
    except ImportError:
        check = None
    compiled, per_schema = {}, {}
    bitmask = torch.zeros(1, (vocab + 31) // 32, dtype=torch.int32)
    for name, schema in schemas().items():
        t = time.perf_counter()
        try:
            compiled[name] = lib.compile(schema)
        except Exception as exc:  # each library has its own error types
            per_schema[name] = {"supported": False, "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        per_schema[name] = {"supported": True, "compile_s": time.perf_counter() - t}
    out["rss_mb"]["after_compiles"] = _rss_mb()

    steps, advances = [], []
    for name, c in compiled.items():
        row = per_schema[name]
        row.update(first_mask_s=[], walks=0, completed=0, valid=0, refused=0, steps=0, invalid_examples=[])
        for seed in range(walks):
            rng = random.Random(f"{name}/{seed}")
            m, ids = lib.matcher(c), []
            for i in range(max_steps):
                bitmask.zero_()
                t = time.perf_counter()
                lib.fill(m, bitmask)
                dt = time.perf_counter() - t
                (row["first_mask_s"] if i == 0 else steps).append(dt)
                bits = (bitmask[0].unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1
                allowed = bits.view(-1)[:vocab].nonzero().view(-1).tolist()
                if not allowed:
                    break
                if eos in allowed and (len(allowed) == 1 or rng.random() < EOS_PROBABILITY):
                    token = eos
                else:
                    token = rng.choice([a for a in allowed if a != eos])
                t = time.perf_counter()
                ok = lib.advance(m, token)
                advances.append(time.perf_counter() - t)
                row["steps"] += 1
                if not ok:
                    row["refused"] += 1  # a token from its own mask refused: a library bug
                    break
                if token == eos:
                    break
                ids.append(token)
            row["walks"] += 1
            if ids and token == eos:
                row["completed"] += 1
                text = tok.decode(ids)
                try:
                    value = json.loads(text)
                    if check is not None:
                        check(schemas()[name], value)
                    row["valid"] += 1
                except Exception as exc:
                    if len(row["invalid_examples"]) < 2:
                        row["invalid_examples"].append({"text": text[:200], "error": str(exc).split("\n")[0][:200]})
        row["first_mask_s"] = max(row["first_mask_s"], default=float("nan"))
    out["rss_mb"]["peak"] = _rss_mb("VmHWM")
    out["schemas"] = per_schema
    tests = {n: r for n, r in per_schema.items() if not n.startswith("edge:")}
    edge = {n: r for n, r in per_schema.items() if n.startswith("edge:")}
    ok = [r for r in tests.values() if r["supported"]]
    out["summary"] = {
        "supported": len(ok), "schemas": len(tests),
        "unsupported": sorted(n for n, r in tests.items() if not r["supported"]),
        "edge_supported": sum(r["supported"] for r in edge.values()), "edge_schemas": len(edge),
        "edge_refused": sorted(n[5:] for n, r in edge.items() if not r["supported"]),
        "edge_no_violation_seen": sorted(n[5:] for n, r in edge.items() if r["supported"] and r["completed"]
                                and r["valid"] == r["completed"]),
        "edge_violated": sorted(n[5:] for n, r in edge.items() if r["supported"] and r["valid"] < r["completed"]),
        "edge_never_completed": sorted(n[5:] for n, r in edge.items() if r["supported"] and not r["completed"]),
        "compile_ms_p50": _pct([r["compile_s"] for r in ok], 0.5) * 1e3,
        "compile_ms_max": max((r["compile_s"] for r in ok), default=float("nan")) * 1e3,
        "compile_first_mask_ms_p50": _pct([r["compile_s"] + r["first_mask_s"] for r in ok], 0.5) * 1e3,
        "compile_first_mask_ms_max": max((r["compile_s"] + r["first_mask_s"] for r in ok), default=float("nan")) * 1e3,
        "mask_steps": len(steps),
        "mask_ms_mean": sum(steps) / max(1, len(steps)) * 1e3,
        "mask_ms_p99": _pct(steps, 0.99) * 1e3,
        "mask_ms_max": max(steps, default=float("nan")) * 1e3,
        "advance_ms_mean": sum(advances) / max(1, len(advances)) * 1e3,
        "walks": sum(r["walks"] for r in ok), "completed": sum(r["completed"] for r in ok),
        "valid": sum(r["valid"] for r in ok), "refused_own_token": sum(r["refused"] for r in ok),
        "invalid_schemas": sorted(n for n, r in tests.items() if r["supported"] and r["valid"] < r["completed"]),
    }
    return out


# ---------------------------------------------------------------- driver

def run_child(library: str, tokenizer_dir: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", library, tokenizer_dir,
           "--walks", str(args.walks), "--max-steps", str(args.max_steps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                "stderr_tail": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(report: dict) -> str:
    head = ("library", "tokenizer", "vocab", "import s", "init s", "schemas ok", "compile p50/max ms",
            "compile+1st mask p50/max ms", "mask/step mean/p99 ms", "advance ms", "valid/completed/walks",
            "edge compiled/clean", "RSS +MB")
    rows = [head]
    for key, r in report["runs"].items():
        lib, tk = key.split("/")
        if "summary" not in r:
            rows.append((lib, tk, "", r.get("missing") or r.get("error", "?"), *[""] * 9))
            continue
        s = r["summary"]
        rows.append((lib, tk, str(r["vocab"]), f"{r['import_s']:.2f}", f"{r['init_s']:.3f}",
                     f"{s['supported']}/{s['schemas']}",
                     f"{s['compile_ms_p50']:.2f} / {s['compile_ms_max']:.1f}",
                     f"{s['compile_first_mask_ms_p50']:.2f} / {s['compile_first_mask_ms_max']:.1f}",
                     f"{s['mask_ms_mean']:.3f} / {s['mask_ms_p99']:.3f}", f"{s['advance_ms_mean']:.3f}",
                     f"{s['valid']}/{s['completed']}/{s['walks']}",
                     f"{s['edge_supported']}/{len(s['edge_no_violation_seen'])} of {s['edge_schemas']}",
                     f"{r['rss_mb']['peak'] - r['rss_mb']['baseline']:.0f}"))
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for lib, f in report["footprint"].items():
        if not f.get("installed"):
            lines.append(f"{lib}: not installed")
            continue
        added = [f"{d['name']} {d.get('version', '(not installed)')}" for d in f["requires"] if not d["in_daemon_lock"]]
        wheels = ", ".join(f"{n} {w['bytes'] / 1e6:.1f} MB" for n, w in f.get("wheels", {}).items())
        lines.append(f"{lib} {f['version']}: {f['installed_bytes'] / 1e6:.1f} MB installed; requires beyond the "
                     f"daemon's lock: {', '.join(added) or 'none'} ({f['added_bytes_installed'] / 1e6:.1f} MB installed "
                     f"with them; not installed here: {', '.join(f['not_installed_requires']) or 'none'})"
                     + (f"; wheels: {wheels}" if wheels else ""))
        for key, r in report["runs"].items():
            if key.startswith(lib + "/") and r.get("summary", {}).get("unsupported"):
                lines.append(f"  {key}: refused {', '.join(r['summary']['unsupported'])}")
            if key.startswith(lib + "/") and r.get("summary", {}).get("invalid_schemas"):
                lines.append(f"  {key}: completed walks that fail jsonschema: {', '.join(r['summary']['invalid_schemas'])}")
            if key.startswith(lib + "/") and "summary" in r:
                s = r["summary"]
                lines.append(f"  {key} edge: refused {', '.join(s['edge_refused']) or 'none'}; compiled, yet a "
                             f"walk broke it {', '.join(s['edge_violated']) or 'none'}; never completed "
                             f"{', '.join(s['edge_never_completed']) or 'none'}")
    if report["missing"]:
        lines.append(f"missing (not importable here): {', '.join(report['missing'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--tokenizers", help=f"default {','.join(TOKENIZERS)} (--quick: demo,tiny)")
    parser.add_argument("--walks", type=int, default=5, help="random walks per schema")
    parser.add_argument("--max-steps", type=int, default=96, help="steps per walk at most")
    parser.add_argument("--quick", action="store_true", help="smoke run: demo and tiny tokenizers, 1 walk")
    parser.add_argument("--wheels", type=Path, help="a folder of downloaded wheels, for their sizes")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per library and tokenizer")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--child", nargs=2, metavar=("LIBRARY", "TOKENIZER_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.walks, args.max_steps)))
        return
    if args.quick:
        args.walks, args.tokenizers = 1, args.tokenizers or "demo,tiny"
    args.tokenizers = args.tokenizers or ",".join(TOKENIZERS)
    libraries = [x for x in args.libraries.split(",") if x]
    for lib in libraries:
        if lib not in LIBRARIES:
            raise SystemExit(f"unknown library {lib!r}; one of {', '.join(LIBRARIES)}")
    sys.path.insert(0, str(ROOT))
    import importlib.util

    missing = [lib for lib in libraries if importlib.util.find_spec(MODULES[lib]) is None]
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                       "note": "shared host: absolute times are noisy, same-run comparisons hold better"},
              "settings": {"walks": args.walks, "max_steps": args.max_steps, "eos_probability": EOS_PROBABILITY,
                           "schemas": len(schemas()) - len(EDGE), "edge_schemas": len(EDGE), "threads": 1, "json_whitespace": "compact"},
              "missing": missing, "footprint": {}, "runs": {}}
    for lib in libraries:
        report["footprint"][lib] = footprint(lib, args.wheels)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        dirs = build_tokenizers([x for x in args.tokenizers.split(",") if x], Path(tmp))
        report["tokenizers_built_s"] = time.perf_counter() - t
        for tk, d in dirs.items():
            for lib in libraries:
                if lib in missing:
                    report["runs"][f"{lib}/{tk}"] = {"missing": "not importable"}
                    continue
                print(f"... {lib} on {tk}", file=sys.stderr, flush=True)
                report["runs"][f"{lib}/{tk}"] = run_child(lib, d, args)
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
