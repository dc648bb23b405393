"""Generate the Python stubs for `protos/galactic/v1/*.proto` and `protos/inference/*.proto`
(the only way they are made).

    python protos/generate.py OUT_DIR          # write galactic/v1/*_pb2{,_grpc}.py{,i}, inference/...
    python protos/generate.py --check OUT_DIR  # exit 1 if OUT_DIR differs from a fresh run

The proto path mirrors the package (`-I protos`, files under `galactic/v1/`, and `inference/`
for the published KServe v2 / Open Inference Protocol package `inference`) so generated
modules import each other as `galactic.v1.x_pb2`, not as top-level siblings.

It runs in the generator venv (`make protos`: .venv-protos, pinned by requirements/protos.txt),
never in the daemon's venv: the protoc inside grpcio-tools stamps its protobuf version into
every stub as the oldest runtime the stub accepts, so a newer grpcio-tools would silently
raise the client's protobuf floor. A different grpcio-tools is refused here.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

import google.rpc

try:
    from grpc_tools import grpc_version, protoc
except ImportError:  # the daemon's own venv, as installed from the lock's dependencies
    raise SystemExit("grpcio-tools is not installed in this Python; run `make protos` "
                     "(it uses .venv-protos, pinned in requirements/protos.txt)") from None

ROOT = Path(__file__).resolve().parent
PACKAGES = (Path("galactic/v1"), Path("inference"))
PINS = ROOT.parent / "requirements" / "protos.txt"


def pinned_tools_version() -> str:
    for line in PINS.read_text().splitlines():
        if line.startswith("grpcio-tools=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit(f"{PINS} pins no grpcio-tools")


def check_tools() -> None:
    want = pinned_tools_version()
    if grpc_version.VERSION != want:
        raise SystemExit(f"grpcio-tools {grpc_version.VERSION} is not the pinned {want} ({PINS}); "
                         "run `make protos` (it uses .venv-protos)")


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    wkt = str(resources.files("grpc_tools") / "_proto")
    # google/rpc/status.proto ships with googleapis-common-protos.
    googleapis = str(Path(google.rpc.__path__[0]).parent.parent)
    protos = sorted(str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).glob("*.proto"))
    args = ["protoc", f"-I{ROOT}", f"-I{wkt}", f"-I{googleapis}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    check_tools()
    if not args.check:
        generate(args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, committed = Path(tmp), args.out
        names = {p.relative_to(root) for package in PACKAGES for root in (fresh, committed)
                 for p in (root / package).glob("*_pb2*")}
        drift = [str(n) for n in sorted(names) if not (fresh / n).exists() or not (committed / n).exists()
                 or not filecmp.cmp(fresh / n, committed / n, shallow=False)]
    if drift:
        print(f"generated stubs drift from protos/: {', '.join(drift)}; run `make protos`", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
