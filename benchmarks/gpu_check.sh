#!/usr/bin/env bash
# The GPU half of the checks, as ONE call on the lent device (see docs/gpu-check.md):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=590)
# Prepare .gpu/ here first with benchmarks/gpu_prepare.sh. Everything it writes lands in $OUT:
# the GPU tests' log, section (c) of bench-speed, and the objectives trained on CUDA. Each step
# gets a time box, so the call ends inside DEADLINE seconds (default 570) with what it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
DEADLINE=${DEADLINE:-570}
mkdir -p "$OUT"
left() { echo $((DEADLINE - SECONDS)); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 IMGCLUSTER_FASHION_MNIST=$PWD/.gpu/fashion-mnist
{ nvidia-smi; python3 -c "import sys, torch, timm, faiss, PIL; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'faiss', faiss.__version__, 'pillow', PIL.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$OUT/machine.txt"
start=$SECONDS
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/gpu-tests.log"
echo "gpu tests: $((SECONDS - start)) s" | tee -a "$OUT/machine.txt"
start=$SECONDS
timeout "$(( $(left) < 300 ? $(left) : 300 ))" python3 benchmarks/bench_speed.py --skip-embed --skip-scale --small-folders "" --out "$OUT/results_speed_gpu.md" 2>&1 | tee "$OUT/bench-speed.log"
echo "bench-speed (c): $((SECONDS - start)) s" | tee -a "$OUT/machine.txt"
# The objectives trained on CUDA with whatever time is left; each finished dataset is kept.
if [ "${GPU_CHECK_OBJECTIVES:-1}" = 1 ] && [ "$(left)" -gt 60 ]; then
  start=$SECONDS
  timeout "$(left)" python3 benchmarks/bench_objectives.py --device cuda --datasets fashion-mnist-test digits 2>&1 | tee "$OUT/bench-objectives.log"
  echo "bench-objectives: $((SECONDS - start)) s" | tee -a "$OUT/machine.txt"
fi
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"  # bench-speed's speed-gpu section, and the objectives' if they ran
