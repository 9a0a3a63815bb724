#!/usr/bin/env bash
# The wheels tunelib needs beside a bare CUDA image (one with torch, transformers, tokenizers,
# safetensors, pyarrow, pandas, jinja2, sentencepiece, tiktoken, tqdm): written to .whl/ in the
# repository root (ignored by git; the device tool carries it: carry [".whl"]), for a machine
# that cannot reach a package index.
#
#   bash benchmarks/gpu_wheels.sh          # here, where pip works (about 4 MB)
#   # there, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#       PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    torchao==0.18.0 omegaconf==2.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# omegaconf's parser runtime is published as a source archive only: build its (pure Python) wheel.
python3 -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
ls .whl
