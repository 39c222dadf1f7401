#!/usr/bin/env bash
# Wheels of the Python packages the lent GPU machine's image lacks (it has torch, numpy, pyarrow,
# matplotlib, tensorboard, scikit-learn, scipy, pyyaml, tqdm, pytest, safetensors, huggingface-hub;
# see the device tool's KINDS.md), for its Python 3.12, into .whl/ (ignored by git). Run here,
# once, before `bash benchmarks/gpu_suite.sh` on the device with carry [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for spec in webdataset==1.0.2 braceexpand==0.1.7 "diffusers==$(python3 -c 'import diffusers; print(diffusers.__version__)')" importlib-metadata==8.7.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec"
done
ls -la .whl
