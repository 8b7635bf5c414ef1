"""The kNN search's defaults at scale, in a module that imports nothing: the CLI shows them in its
help before numpy loads. What they mean and when to change them: :mod:`imgcluster.scale.knn`
and docs/scale.md, "Neighbours at scale"."""

RAY_KNN_THRESHOLD = 20_000_000  # rows; up to this many one machine's search (neighbours.py) answers
DEFAULT_NPROBE = 16  # partitions searched per query above it (as neighbours.IVF_NPROBE)
