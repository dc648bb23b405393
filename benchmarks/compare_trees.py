"""One benchmark, two checkouts of galactic, in one run: did a change move the figures?

    python benchmarks/compare_trees.py --before DIR [--after DIR] [--rounds N] --json OUT \
        -- llm_serving.py --quick --systems galacticd

Runs `python benchmarks/SCRIPT ARGS --json FILE` once per tree per round, alternating
(before, after, before, after, ...) so that drift on a shared machine hits both alike. Each
run is the tree's own benchmark script and daemon: the working directory and PYTHONPATH are
the tree's (and its `clients/python`), which win over the editable install of this venv.
`--after` defaults to this checkout. DIR is usually a worktree of the commit before the
change (`git worktree add /tmp/before COMMIT`).

The benchmark's JSON is a list of rows; rows are matched by their text fields (case, system,
concurrency...), and each numeric field's median over rounds is compared: after / before.
stdout gets the table; OUT the rows of both trees and the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# Fields that describe a row's conditions rather than name it or measure it.
CONTEXT = {"round", "repeat", "loadavg", "disturbed", "other_cores"}
KEY_TYPES = (str, bool)
# Numeric fields that name a row (its size, its settings) rather than measure it.
NAMING = {"concurrency", "targets", "sites", "intra_op_threads", "threads", "new_tokens", "requests"}


def run_once(tree: Path, script: str, args: list[str], out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "clients" / "python")])}
    cmd = [sys.executable, str(tree / "benchmarks" / script), *args, "--json", str(out)]
    print(f"# {tree}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    return json.loads(out.read_text())


def key(row: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in row.items() if k not in CONTEXT and (isinstance(v, KEY_TYPES) or
                                                                                 k in NAMING)))


def compare(before: list[dict], after: list[dict]) -> list[dict]:
    def medians(rows: list[dict]) -> dict[tuple, dict[str, float]]:
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault(key(r), []).append(r)
        return {k: {f: statistics.median(r[f] for r in rs)
                    for f, v in rs[0].items()
                    if f not in CONTEXT and isinstance(v, (int, float)) and not isinstance(v, bool) and f not in NAMING
                    and all(isinstance(r.get(f), (int, float)) for r in rs)}
                for k, rs in groups.items()}

    b, a = medians(before), medians(after)
    out = []
    for k in b:
        if k not in a:
            continue
        for field in b[k]:
            if field in a[k]:
                ratio = a[k][field] / b[k][field] if b[k][field] else None
                out.append({"row": dict(k), "field": field, "before": b[k][field], "after": a[k][field],
                            "after_over_before": None if ratio is None else round(ratio, 3)})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, default=HERE)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--fields", default="", help="comma-separated numeric fields to print (default: all)")
    p.add_argument("script", help="a script in benchmarks/ of both trees")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    args = [x for x in a.args if x != "--"]
    rows: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for label, tree in (("before", a.before), ("after", a.after)):
                for row in run_once(tree.resolve(), a.script, args, Path(tmp) / f"{label}-{r}.json"):
                    rows[label].append({**row, "round": r})
    table = compare(rows["before"], rows["after"])
    wanted = {f for f in a.fields.split(",") if f}
    print(f"\n{'row':<58} {'field':<16} {'before':>10} {'after':>10} {'after/before':>12}")
    for t in table:
        if wanted and t["field"] not in wanted:
            continue
        name = " ".join(str(v) for _, v in sorted(t["row"].items()))
        ratio = "-" if t["after_over_before"] is None else f"{t['after_over_before']:.3f}"
        print(f"{name[:58]:<58} {t['field']:<16} {t['before']:>10.2f} {t['after']:>10.2f} {ratio:>12}")
    a.json.write_text(json.dumps({"before": str(a.before), "after": str(a.after), "script": a.script, "args": args,
                                  "rounds": a.rounds, "rows": rows, "comparison": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
