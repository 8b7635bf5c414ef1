#!/bin/bash
# A cold `assign` of one folder by two imgcluster checkouts in turn, same options, each with a fresh cache:
# wall, user and system seconds of the whole process tree (decode workers included) and the load average.
#   benchmarks/ab_runtime.sh BEFORE_CHECKOUT AFTER_CHECKOUT FOLDER [assign options...]
# e.g. benchmarks/ab_runtime.sh /tmp/before . benchmarks/data/peers/fashion-mnist-10000 --model efficientnet-lite0 --runtime onnx-int8 --clusters 10
set -euo pipefail
before=$(cd "$1" && pwd); after=$(cd "$2" && pwd); folder=$(cd "$3" && pwd); shift 3
python=${PYTHON:-$after/.venv/bin/python}
export IMGCLUSTER_MODEL_CACHE=${IMGCLUSTER_MODEL_CACHE:-$after/benchmarks/data/model-cache} OMP_WAIT_POLICY=PASSIVE
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for side in before after; do
  dir=$before; [ "$side" = after ] && dir=$after
  echo "$side: $(git -C "$dir" log --oneline -1 | cut -c1-60); load $(cut -d' ' -f1-3 /proc/loadavg)"
  (cd "$dir" && PYTHONPATH=$dir /usr/bin/time -f "  wall %e s, user %U s, system %S s" "$python" -m imgcluster assign "$folder" "$@" \
    --cache-dir "$work/$side-cache" --out "$work/$side.csv" --quiet)
done
echo "load after $(cut -d' ' -f1-3 /proc/loadavg)"
