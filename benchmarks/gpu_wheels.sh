#!/usr/bin/env bash
# Download here, into .whl/, the wheels benchmarks/gpu_check.sh installs on the lent GPU machine.
#
#   bash benchmarks/gpu_wheels.sh            # PYTHON=... to read the versions from another environment
#
# That machine is bare for hayai (Python 3.12, x86-64, torch with CUDA, no network): it gets hayai's runtime
# dependencies at the versions of constraints.txt, pytest and peft for `pytest -m gpu`, and everything they
# need, at the versions installed in this environment (where the tests pass). Left out, because the GPU
# image has them (/work/.library/device/KINDS.md lists its packages) and they are large: torch and its CUDA
# libraries; numpy and scipy (the image's torch and scipy are built against its numpy: carrying another would
# shadow it under them); matplotlib and its dependencies (only the training loss chart uses it); and pillow,
# hf-xet, pygments and pyyaml, of which hayai needs no particular version (hf-xet only downloads; stage 1 of
# gpu_check records the version of each that was used). The wheels travel with the working tree, 64 MiB in
# all: this prints their size and the tree's. .whl/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

rm -rf .whl
mkdir -p .whl
"$PYTHON" - > .whl/requirements.txt <<'EOF'
"""NAME==VERSION of every wheel to carry: the roots at their constraints.txt pins, and their requirements'
closure (for Linux x86-64, CPython 3.12, no extras) at the versions installed here."""
import importlib.metadata as metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

ROOTS = ["diffusers", "transformers", "accelerate", "safetensors", "huggingface-hub", "tokenizers", "pillow", "typer",
         "click", "rich", "pyyaml", "pytest", "peft"]
CARRY_NOT = {"torch", "triton", "numpy", "scipy", "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver",
             "pyparsing", "python-dateutil", "six", "setuptools", "pip", "pillow", "hf-xet", "pygments", "pyyaml"}
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "extra": ""}


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


pins = {}
for line in Path("constraints.txt").read_text().splitlines():
    if "==" in line and not line.lstrip().startswith("#"):
        name, version = line.split("#")[0].strip().split("==")
        pins[norm(name)] = version
versions, todo = {}, [norm(r) for r in ROOTS]
while todo:
    name = todo.pop()
    if name in versions or name in CARRY_NOT or name.startswith("nvidia-"):
        continue
    installed = metadata.distribution(name)
    versions[name] = pins.get(name, installed.version)
    if name in pins and pins[name] != installed.version:
        raise SystemExit(f"{name} {installed.version} is installed here but constraints.txt pins {pins[name]}: run `make setup`")
    for text in installed.requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(TARGET):
            todo.append(norm(requirement.name))
for name in sorted(versions):
    print(f"{name}=={versions[name]}")
EOF

platforms=()
for tag in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  platforms+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl -r .whl/requirements.txt

wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "$(ls .whl/*.whl | wc -l) wheels in .whl/: $((wheels / 1048576)) MiB; the working tree beside them: $((tree / 1048576)) MiB;" \
     "together $(((wheels + tree) / 1048576)) of the 64 MiB that may travel"
if [ $((wheels + tree)) -gt $((60 * 1048576)) ]; then
  echo "too close to the 64 MiB limit" >&2
  exit 1
fi
