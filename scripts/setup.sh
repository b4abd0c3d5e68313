#!/usr/bin/env bash
# Installs what building and testing reel needs; safe to run again (each step checks first).
#  - Debian packages: FFmpeg development files (video decoding), clang/libclang (bindgen), pkg-config,
#    libturbojpeg0 (libjpeg-turbo's TurboJPEG library, loaded at run time to decode JPEG as Pillow does).
#  - A Python venv with the CUDA 13.0 compiler wheels (nvcc, ptxas, fatbinary); no GPU is needed to compile.
#  - A Python venv with the `gguf` package for the GGUF cross-check test.
# Prints the NVCC path to use; .ci/run exports it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CUDA_PIP_VENV:-$ROOT/.venv-cuda}"
PYVENV="${REEL_PY_VENV:-$ROOT/.venv-py}"

need_apt=0
pkg-config --exists libavcodec libavformat libavutil libswscale 2>/dev/null || need_apt=1
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt=1
command -v ffmpeg >/dev/null 2>&1 || need_apt=1
ls /usr/lib/*/libturbojpeg.so.0 >/dev/null 2>&1 || need_apt=1
if [ "$need_apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends pkg-config clang libclang-dev \
    libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev \
    ffmpeg libturbojpeg0 >/dev/null
fi

NVCC_BIN="$(ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1 || true)"
if [ -z "$NVCC_BIN" ]; then
  python3 -m venv "$VENV"
  # Pin all five: unpinned wheels pull 13.5 (PTX ISA 9.5, too new for a CUDA 13.0 driver).
  "$VENV/bin/pip" install -q --no-cache-dir nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
  NVCC_BIN="$(ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -1)"
fi

if [ ! -x "$PYVENV/bin/python" ] || ! "$PYVENV/bin/python" -c "import gguf, numpy" 2>/dev/null; then
  python3 -m venv "$PYVENV"
  "$PYVENV/bin/pip" install -q --no-cache-dir gguf==0.19.0 numpy
fi

echo "NVCC=$NVCC_BIN"
