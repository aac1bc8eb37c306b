#!/usr/bin/env bash
# Build benchmarks/peers/.venv: FFCV, LitData, MosaicML Streaming and WebDataset, and what the
# project needs to run beside them, in an environment of their own (never the project's .venv).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
# FFCV 1.0.2 builds from source against libturbojpeg and OpenCV (pkg-config finds them).
if ! pkg-config --exists libturbojpeg opencv4 2>/dev/null; then
    echo "benchmarks/peers/setup.sh: FFCV needs the libturbojpeg and OpenCV development packages;" \
         "on Debian or Ubuntu: apt-get install -y libturbojpeg0-dev libopencv-dev pkg-config" >&2
    exit 1
fi
test -x "$here/.venv/bin/python" || "$python" -m venv "$here/.venv"
"$here/.venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
# torch first, pinned with the torchvision that imports beside it (LitData and MosaicML Streaming
# import torchvision; PyPI's torchvision does not load beside the project's CPU torch 2.13.0):
# the pair these machines keep on disk, a CUDA build that runs on the CPU too (about 5.5 GB)
"$here/.venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 numpy\<2.3 cython pkgconfig
# ffcv's build imports numpy, cython and pkgconfig: build it against this environment
"$here/.venv/bin/python" -m pip install -q --no-build-isolation ffcv==1.0.2
"$here/.venv/bin/python" -m pip install -q -r "$here/requirements.txt"
"$here/.venv/bin/python" -c "
import ffcv, litdata, streaming, webdataset  # each imports beside the others
from importlib.metadata import version
print('peers ready:', ', '.join(f'{p} {version(p)}' for p in ('ffcv', 'litdata', 'mosaicml-streaming', 'webdataset', 'torch')))"
