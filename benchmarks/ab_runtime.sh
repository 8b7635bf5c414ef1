#!/bin/bash
# A cold `assign` of one folder by two imgcluster checkouts in turn, same options, each with a fresh cache:
# wall, user and system seconds of the whole process tree (decode workers included) and the load average,
# then whether the two caches hold the same features, bit for bit, path by path (a speed change must not move them).
#   benchmarks/ab_runtime.sh BEFORE_CHECKOUT AFTER_CHECKOUT FOLDER [assign options...]
# e.g. benchmarks/ab_runtime.sh /tmp/before . benchmarks/data/peers/fashion-mnist-10000 --model efficientnet-lite0 --runtime onnx-int8 --clusters 10
# ROUNDS=N runs N rounds, the order alternating (before after, after before, ...).
set -euo pipefail
before=$(cd "$1" && pwd); after=$(cd "$2" && pwd); folder=$(cd "$3" && pwd); shift 3
options=("$@")
python=${PYTHON:-$after/.venv/bin/python}
export IMGCLUSTER_MODEL_CACHE=${IMGCLUSTER_MODEL_CACHE:-$after/benchmarks/data/model-cache} OMP_WAIT_POLICY=PASSIVE
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {  # run SIDE ROUND
  local side=$1 dir=$before
  [ "$side" = after ] && dir=$after
  echo "round $2, $side: $(git -C "$dir" log --oneline -1 | cut -c1-60); load $(cut -d' ' -f1-3 /proc/loadavg)"
  rm -rf "$work/$side-cache"
  (cd "$dir" && PYTHONPATH=$dir /usr/bin/time -f "  wall %e s, user %U s, system %S s" "$python" -m imgcluster assign "$folder" "${options[@]}" \
    --cache-dir "$work/$side-cache" --out "$work/$side.csv" --quiet)
}
compare() {  # the features of each path in the two caches, as the shards hold them
  PYTHONPATH=$after "$python" - "$work/before-cache" "$work/after-cache" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from imgcluster.cache import read_shard


def features(cache: str) -> dict[str, np.ndarray]:
    rows: dict[str, np.ndarray] = {}
    for shard in sorted(Path(cache).rglob("*.safetensors")):
        if shard.parent.name == "shards":
            array, table = read_shard(shard)
            rows.update((rel, array[i]) for i, (rel, *_) in enumerate(table))
    return rows


a, b = features(sys.argv[1]), features(sys.argv[2])
same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
print(f"  features: {len(a)} and {len(b)} paths, {'bit for bit the same' if same else 'NOT the same'}")
EOF
}
for round in $(seq 1 "${ROUNDS:-1}"); do
  order="before after"
  [ $((round % 2)) = 0 ] && order="after before"
  for side in $order; do run "$side" "$round"; done
  compare
done
echo "load after $(cut -d' ' -f1-3 /proc/loadavg)"
