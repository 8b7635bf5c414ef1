"""``imgcluster.scale.assign_store``: label every row of a feature store in one streaming pass.

The head is trained on the store's sample (or loaded from ``head``); the outlier thresholds and
cluster names are estimated on that sample (:mod:`imgcluster.scale.labels`); then each block of
rows is labelled and written as it comes, to the CSV and to a parquet copy with the same
columns, so memory holds one block, never the store. ``engine="local"`` runs the pass in this
process; ``engine="ray"`` runs it as Ray Data ``map_batches`` over the store's buckets on an
actor pool, each actor loading the head once from its safetensors checkpoint. Both write the
same rows in the same order (bucket by bucket, Ray with ``preserve_order``), so the local pass is
the reference for the Ray one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from imgcluster.config import DEFAULT_CLUSTERS, DEFAULT_KNN, DEFAULT_OBJECTIVE, TrainConfig
from imgcluster.errors import ImgclusterError, ParameterError, literal
from imgcluster.progress import ProgressFn, Reporter, check_progress, count, keeping_warnings
from imgcluster.scale.knn import DEFAULT_NPROBE, RAY_KNN_THRESHOLD, check_knn_options
from imgcluster.scale.labels import SampleModel, fit_isolation, fit_sample_model, label_batch, naming_file, readable_source
from imgcluster.scale.sample import DEFAULT_TRAIN_SAMPLE
from imgcluster.userpath import expand_home

if TYPE_CHECKING:
    from imgcluster.scale.training import StoreSample

__all__ = ["StoreAssignment", "assign_store"]

PathLike = str | os.PathLike[str]
BATCH_ROWS = 65_536  # rows per block of the local pass: 65,536 x 1280 float32 is 320 MB


@dataclass
class StoreAssignment:
    """What :func:`assign_store` did: where it wrote, how many rows and clusters, the head used."""

    rows: int
    cluster_sizes: dict[int, int]
    outliers: int
    head: Path
    written: dict[str, Path]  # csv, parquet, sidecar (those written)
    engine: str
    seconds: float
    sample: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    # rows whose file is no longer in the store's source (deleted or moved since it was embedded): labelled all the
    # same, as the store holds them; None when the source is not a local folder this process can read (not checked)
    missing_files: int | None = None


def parquet_path(out: Path) -> Path:
    """The parquet copy of the CSV ``out``: ``clusters.csv`` -> ``clusters.parquet``."""
    return out.with_suffix(".parquet")


class Writers:
    """The CSV and its parquet copy, written block by block; both appear complete or not at all."""

    def __init__(self, out: str, raw_csv: bool) -> None:
        self._stack = contextlib.ExitStack()
        self._out = out
        self._raw = raw_csv
        self._csv: Any = None
        self._parquet: Any = None
        self._parquet_handle: IO[bytes] | None = None

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._parquet is not None:
            # The footer, before the file is renamed into place (or, after a failure, before the
            # temporary file is removed: a writer left open would write to a closed file later).
            with contextlib.suppress(Exception) if exc[0] is not None else contextlib.nullcontext():
                self._parquet.close()
        self._stack.__exit__(*exc)  # type: ignore[arg-type]

    def write(self, columns: dict[str, np.ndarray]) -> None:
        from imgcluster.assign import Assignment
        from imgcluster.csvfile import CsvWriter, _output, assignment_header, assignment_rows

        extra = {k: v for k, v in columns.items() if k not in ("path", "cluster", "confidence")}
        block = Assignment(np.asarray(columns["cluster"]), np.asarray(columns["confidence"]), extra)
        paths = [str(p) for p in columns["path"]]
        if self._csv is None:
            handle = self._stack.enter_context(_output(self._out))
            self._csv = CsvWriter(handle, self._raw)
            self._csv.writerow(assignment_header(block))
        self._csv.writerows(assignment_rows(paths, block))
        if self._out != "-" and not _is_stream(self._out):
            self._write_parquet(paths, block)

    def _write_parquet(self, paths: list[str], block: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from imgcluster.atomic import atomic_open
        from imgcluster.csvfile import assignment_header

        names = assignment_header(block)
        arrays = [
            pa.array(paths, pa.string()), pa.array(np.asarray(block.cluster, np.int64)), pa.array(np.asarray(block.confidence, np.float32)),
        ]  # fmt: skip
        for name in names[3:]:
            values = block.extra[name]
            arrays.append(pa.array([str(v) for v in values], pa.string()) if values.dtype.kind in "USO" else pa.array(values))
        table = pa.table(dict(zip(names, arrays)))
        if self._parquet is None:
            self._parquet_handle = self._stack.enter_context(atomic_open(parquet_path(Path(self._out)), "wb"))
            self._parquet = pq.ParquetWriter(self._parquet_handle, table.schema, compression="zstd")
        self._parquet.write_table(table)


def _is_stream(out: str) -> bool:
    from imgcluster.atomic import is_stream

    return is_stream(Path(out))


class Tally:
    """Counts the pass keeps as blocks go by: rows, cluster sizes, outliers, the highest confidence, and, when the
    store's source is a local folder (``source``), the rows whose file is no longer there (one ``lstat`` a row)."""

    def __init__(self, source: Path | None = None) -> None:
        self.source = source
        self.missing = 0
        self.missing_example = ""
        self.rows = 0
        self.sizes: dict[int, int] = {}
        self.outliers = 0
        self.isolated = 0
        self.far = 0
        self.low = 0
        self.top = 0.0

    def add(self, columns: dict[str, np.ndarray]) -> None:
        from imgcluster.outliers import REASON_CONFIDENCE, REASON_DISTANCE, REASON_ISOLATED

        self.rows += len(columns["cluster"])
        for k, n in zip(*np.unique(columns["cluster"], return_counts=True)):
            self.sizes[int(k)] = self.sizes.get(int(k), 0) + int(n)
        self.outliers += int(np.asarray(columns["outlier"]).sum())
        reasons = np.char.split(np.asarray(columns["outlier_reason"], dtype=str), "+")
        self.isolated += sum(REASON_ISOLATED in r for r in reasons)
        self.far += sum(REASON_DISTANCE in r for r in reasons)
        self.low += sum(REASON_CONFIDENCE in r for r in reasons)
        if len(columns["confidence"]):
            self.top = max(self.top, float(np.max(columns["confidence"])))
        if self.source is not None:
            # a manifest's row may name an object (s3://...) rather than a file under the source: not checked
            gone = [str(p) for p in columns["path"] if "://" not in str(p) and not os.path.lexists(self.source / str(p))]
            self.missing += len(gone)
            if gone:  # the first by name, whatever order the store's files come in
                self.missing_example = min(gone) if not self.missing_example else min(self.missing_example, *gone)


def label_bucket(
    uri: str, folder: str, objective: Any, model: SampleModel, device: Any, batch_rows: int, on_problem: Any = None
) -> Iterator[dict[str, np.ndarray]]:
    """One bucket's rows labelled, file by file in blocks of at most ``batch_rows``: the unit both engines share.

    A head's float32 products round differently in the last bits with the number of rows they
    are given at once (a confidence's sixth decimal, measured), so both engines give it the same
    blocks, and the Ray pass writes the local pass's CSV byte for byte.
    """
    from imgcluster.featurestore import check_finite, iter_bucket

    for paths, features in iter_bucket(uri, folder, on_problem):
        check_finite(uri, paths, features)  # the sample's rows were checked; a row outside it would be labelled as garbage
        for start in range(0, len(paths), batch_rows):
            yield label_batch(objective, model, paths[start : start + batch_rows], features[start : start + batch_rows], device)


def local_pass(
    uri: str, objective: Any, model: SampleModel, device: Any, batch_rows: int, on_problem: Any
) -> Iterator[dict[str, np.ndarray]]:
    """The pass in this process, bucket by bucket in the order :func:`imgcluster.featurestore.iter_batches` reads them."""
    from imgcluster.featurestore import bucket_folders

    for folder in bucket_folders(uri):
        yield from label_bucket(uri, folder, objective, model, device, batch_rows, on_problem)


class _Labeller:
    """A Ray actor: loads the head once from its checkpoint files, then labels whole buckets."""

    def __init__(self, uri: str, weights: bytes, description: bytes, model: SampleModel, batch_rows: int) -> None:
        import torch

        from imgcluster.checkpoint import load_checkpoint

        torch.set_num_threads(1)  # one CPU per actor; Ray's OMP_NUM_THREADS says the same, torch is told explicitly
        with tempfile.TemporaryDirectory() as folder:
            head = Path(folder) / "head.safetensors"
            head.write_bytes(weights)
            head.with_suffix(".json").write_bytes(description)
            self.objective, _ = load_checkpoint(head)  # the same checks as on the driver: checksum, shapes, finite weights
        self.uri = uri
        self.model = model
        self.batch_rows = batch_rows
        self.device = torch.device("cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blocks = [block for folder in batch["bucket"]
                  for block in label_bucket(self.uri, str(folder), self.objective, self.model, self.device, self.batch_rows)]  # fmt: skip
        if not blocks:
            return {"path": np.array([], dtype=object), "cluster": np.zeros(0, np.int64), "confidence": np.zeros(0, np.float32)}
        return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def ray_pass(uri: str, head: Path, model: SampleModel, actors: int | None, batch_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The pass as Ray Data ``map_batches`` over the store's buckets; Ray must be initialised."""
    from imgcluster.featurestore import bucket_folders
    from imgcluster.scale.engine import quiet_data_context  # no progress bars, errors in a batch retried

    folders = bucket_folders(uri)
    if not folders:
        return
    with quiet_data_context() as context:
        previous = context.execution_options.preserve_order
        context.execution_options.preserve_order = True  # the local pass's order: the CSV does not depend on the engine
        try:
            yield from _map_buckets(uri, folders, head, model, actors, batch_rows)
        finally:
            context.execution_options.preserve_order = previous


def _map_buckets(
    uri: str, folders: list[str], head: Path, model: SampleModel, actors: int | None, batch_rows: int
) -> Iterator[dict[str, np.ndarray]]:
    import ray
    from ray.data import ActorPoolStrategy

    from imgcluster.scale.embed_job import RETRIES, map_batches
    from imgcluster.scale.engine import own_errors

    size = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
    dataset = ray.data.from_items([{"bucket": f} for f in folders], override_num_blocks=len(folders))
    labelled = map_batches(  # retries bounded: Ray Data's defaults retry a batch that always fails forever
        dataset, _Labeller, {"max_restarts": RETRIES, "max_task_retries": RETRIES}, batch_size=max(1, len(folders) // (4 * size)),
        num_cpus=1, compute=ActorPoolStrategy(min_size=1, max_size=max(1, size)),
        fn_constructor_kwargs={
            "uri": uri, "weights": head.read_bytes(), "description": head.with_suffix(".json").read_bytes(), "model": model,
            "batch_rows": batch_rows,
        },
    )  # fmt: skip
    with own_errors():  # a store row the pass refuses: one line, not Ray's traceback
        for block in labelled.iter_batches(batch_size=None, batch_format="numpy"):
            if len(block["cluster"]):
                yield {k: np.asarray(v) for k, v in block.items()}


def assign_store(
    features: str,
    *,
    out: PathLike,
    head: PathLike | None = None,
    engine: str = "local",
    address: str | None = None,
    num_cpus: int | None = None,
    n_clusters: int | str = DEFAULT_CLUSTERS,
    objective: str = DEFAULT_OBJECTIVE,
    k_min: int = 2,
    k_max: int = 20,
    epochs: int | None = None,
    batch_size: int = TrainConfig.batch_size,
    lr: float = TrainConfig.lr,
    knn: int = DEFAULT_KNN,
    seed: int = 0,
    balance: float | None = None,
    self_label: bool = False,
    uco: bool = False,
    objective_options: dict[str, Any] | None = None,
    train_sample: int = DEFAULT_TRAIN_SAMPLE,
    knn_threshold: int = RAY_KNN_THRESHOLD,
    nprobe: int = DEFAULT_NPROBE,
    min_confidence: float = 0.0,
    names: bool = True,
    explain: bool = False,
    device: str = "auto",
    runtime: str = "auto",
    raw_csv: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: ProgressFn | None = None,
) -> StoreAssignment:
    """Label every row of the feature store at ``features``: what ``imgcluster assign --features`` does.

    Trains a head on the store's sample (the parameters of :func:`imgcluster.scale.train_from_store`;
    saved like it) or uses the checkpoint ``head``; writes the CSV to ``out`` (``"-"``: standard
    output) and, beside a regular file, ``<stem>.parquet`` with the same columns and the sidecar
    ``.json``. Columns: path (as the store records it), cluster, confidence, cluster_name
    (``names``, Lite0 stores only), outlier, outlier_reason, and the objective's explanations with
    ``explain`` (see :mod:`imgcluster.scale.labels` for how they are estimated at this scale).
    ``engine`` is ``local`` or ``ray`` (``address``: a cluster, None: a local instance of
    ``num_cpus`` cores); with ``ray`` the sample's buckets are read by Ray tasks too. Rows come in
    the store's order, bucket by bucket. ``runtime`` runs the one model pass a store's ``assign``
    makes, the naming pass over a source drawn light on black (``onnx``, ``onnx-int8``: in the
    ONNX file a folder's run of that runtime left, as a folder's ``assign`` does; else torch).
    """
    from imgcluster.atomic import check_writable
    from imgcluster.featurestore import read_meta
    from imgcluster.folder import check_out
    from imgcluster.head_config import Training, check_flags
    from imgcluster.outliers import check_min_confidence
    from imgcluster.scale.training import check_engine, engine_session, head_for_store, read_sample, said_when_stopped

    start = time.perf_counter()
    check_flags(self_label=self_label, uco=uco, names=names, explain=explain, raw_csv=raw_csv)
    features, out, head = expand_home(features), expand_home(out), expand_home(head)
    check_progress(progress)
    check_engine(engine, address)
    check_min_confidence(min_confidence)
    check_knn_options(knn_threshold, nprobe)
    out_text = os.fspath(out)
    if head is not None:
        from imgcluster.checkpoint import checkpoint_json

        inputs = {Path(head): "the head checkpoint", checkpoint_json(Path(head)): "the head's description"}
    else:
        inputs = {}
    out_path, beside = check_out(out_text, Path("."), inputs=inputs)
    if beside is not None and parquet_path(beside) == beside:
        raise ParameterError(f"{{out}} {out_text} is where the CSV goes, and its parquet copy goes beside it as <stem>.parquet: "
                             "give the CSV a name ending in .csv")  # fmt: skip
    if beside is not None and parquet_path(beside).is_dir():  # it failed after the training: "cannot write x.parquet"
        raise ParameterError(f"{{out}} {literal(out_text)}: {literal(parquet_path(beside))}, which goes beside it, is a folder")
    if out_path is not None:
        check_writable(out_path)  # fail before the training, not after it
    read_meta(features)  # no store there: said before torch is imported (5.8 s), as a missing FOLDER is
    from imgcluster.checkpoint import check_backbone, load_checkpoint
    from imgcluster.estimator import checked_head
    from imgcluster.pipeline import resolve_device

    progress, warnings = keeping_warnings(progress)
    report = Reporter(progress, "assign")
    dev = resolve_device(device)
    from imgcluster.onnxruntime_backend import plan_runtime

    # Before the training: a runtime that cannot run here says so now. No model of the run's own (None): auto is
    # torch, as Ray's actors ran the store's features; the naming pass runs int8 only when asked for it.
    naming_runtime = plan_runtime(runtime, dev.type, None)
    estimator = None
    meta_head: dict[str, Any] | None = None
    if head is None:
        estimator = checked_head(Training.of(locals()), device=device, objective_options=objective_options)
    else:
        trained, meta_head = load_checkpoint(Path(head))
    with engine_session(engine, address, num_cpus) as tasks:
        with said_when_stopped("reading the training sample"):
            sample = read_sample(features, train_sample, seed, progress, tasks)
        if meta_head is not None:
            assert head is not None
            head_path = Path(head)
            if int(meta_head["feature_dim"]) != sample.meta.dim:
                raise ImgclusterError(
                    f"head {head} expects {meta_head['feature_dim']}-d features but {features} holds "
                    f"{sample.meta.dim}-d features of {sample.meta.model}"
                )
            check_backbone(meta_head, sample.meta.identity, head_path)
            train = meta_head.get("train")
        else:
            assert estimator is not None
            from imgcluster.scale.training import default_head_path

            with said_when_stopped("training the head"):
                head_for_store(sample, estimator, knn_threshold=knn_threshold, nprobe=nprobe, progress=progress)
            trained, train = estimator.objective_, dataclasses.asdict(estimator.train_config_)
            head_path = default_head_path(sample, estimator.train_config_, beside)
            estimator.save(head_path)
            Reporter(progress, "train").info(f"head saved to {head_path}")
        use_names = names and _names_apply(sample, report)
        kept = f"nothing was written; the head is saved in {head_path}: give it as the head to rerun without training"
        with said_when_stopped("searching the sample's neighbours for the isolation test", kept):
            isolation = fit_isolation(
                sample.features, sample.paths, sample.seed, knn_threshold=knn_threshold, nprobe=nprobe, use_gpu=dev.type == "cuda",
                progress=progress,
            )  # fmt: skip
        # The names take a pass over the sample (its images, for a store drawn light on black): a stop there said nothing.
        with said_when_stopped("naming the clusters" if use_names else "measuring the outlier thresholds", kept):
            model, _ = fit_sample_model(
                trained, sample.features, dev, min_confidence=min_confidence, names=use_names, explain=explain, isolation=isolation,
                paths=sample.paths, source=sample.meta.source, progress=progress,
                onnx=naming_file(naming_runtime, sample.meta.identity) if use_names else (None, ""),
            )  # fmt: skip
        local_source, _ = readable_source(sample.meta.source)
        tally = Tally(local_source)
        problems: list[str] = []
        report.start(sample.rows, f"assigning {sample.rows} rows ({engine})")
        try:
            with Writers(out_text, raw_csv) as writers:
                if engine == "ray":
                    actors = num_cpus and max(1, num_cpus - 1)  # one CPU stays with the driver, which writes the CSV
                    _drain(ray_pass(sample.uri, head_path, model, actors, batch_rows), writers, tally, report)
                else:
                    _drain(local_pass(sample.uri, trained, model, dev, batch_rows, problems.append), writers, tally, report)
        except KeyboardInterrupt as exc:
            from imgcluster.signals import Interrupted

            raise Interrupted.wrap(
                exc, f"interrupted while assigning {tally.rows} of {sample.rows} rows: no CSV was written "
                f"(it appears whole or not at all); the head is saved in {head_path}: give it as the head to rerun without training"
            ) from None  # fmt: skip
        for problem in problems:
            report.warning(f"feature file ignored: {problem}")
        if tally.missing:
            report.warning(
                f"{tally.missing} of the {tally.rows} rows are of files no longer in {sample.meta.source} (deleted or moved since "
                f"they were embedded; e.g. {literal(tally.missing_example)}): they are labelled as the store holds them"
            )
        chance = 1.0 / trained.n_clusters
        if tally.rows and tally.top < chance + 0.01:
            report.warning(
                f"the head is no surer of any image than chance (confidence at most {tally.top:.3f}, "
                f"chance {chance:.3f}): these clusters mean nothing; try more images or fewer {{n_clusters}}"
            )
        report.info(f"{count(tally.outliers, 'outlier')} of {tally.rows}: {_outlier_tally(tally, model, min_confidence)}")
        written: dict[str, Path] = {}
        if out_path is not None:
            written["csv"] = out_path
        if beside is not None:
            from imgcluster.config import AssignConfig, sidecar_path, write_sidecar
            from imgcluster.outliers import RULE

            written["parquet"] = parquet_path(beside)
            source = sample.meta.source
            assign = AssignConfig(source, out_text, str(head_path), explain, raw_csv, use_names)
            written["sidecar"] = write_sidecar(
                sidecar_path(beside), assign=assign, features=sample.describe(), train=train, backbone=sample.meta.identity,
                compute=sample.meta.compute, head={"path": str(head_path), "objective": trained.name, "clusters": trained.n_clusters},
                result={
                    "images": tally.rows, "engine": engine, "cluster_sizes": dict(sorted(tally.sizes.items())),
                    "parquet": str(written["parquet"]),
                    "outliers": {  # as a folder's sidecar counts them (outliers.Outliers.summary)
                        "min_confidence": min_confidence, "rule": RULE, "outliers": tally.outliers, "low_confidence": tally.low,
                        "far_from_centre": tally.far, "isolated": tally.isolated, "estimated_on_sample": len(sample.paths),
                    },
                    **model.to_dict(),
                },
            )  # fmt: skip
            clusters = count(len(tally.sizes), "cluster")
            report.info(f"wrote {count(tally.rows, 'assignment')} to {out_path} and {written['parquet']} ({clusters})")
        return StoreAssignment(
            rows=tally.rows, cluster_sizes=dict(sorted(tally.sizes.items())), outliers=tally.outliers, head=head_path, written=written,
            engine=engine, seconds=time.perf_counter() - start, sample=sample.describe(), warnings=warnings,
            missing_files=tally.missing if local_source is not None else None,
        )  # fmt: skip


def _drain(blocks: Iterator[dict[str, np.ndarray]], writers: Writers, tally: Tally, report: Reporter) -> None:
    for columns in blocks:
        writers.write(columns)
        tally.add(columns)
        report.advance(len(columns["cluster"]))


def _outlier_tally(tally: Tally, model: SampleModel, min_confidence: float) -> str:
    """What each outlier test found, naming only the tests that ran, as a folder's ``assign`` says it."""
    from imgcluster.outliers import ISOLATION_K_MIN, MIN_CLUSTER_SIZE

    parts = [f"{tally.low} below {{min_confidence}} {min_confidence}"] if min_confidence > 0 else []
    if np.isfinite(model.thresholds).any():
        parts.append(f"{tally.far} far from their cluster's centre")
    if model.isolation is not None:
        parts.append(f"{tally.isolated} isolated from the rest")
    if not parts:
        parts.append(
            f"too few rows in the sample for the outlier tests (a cluster needs {MIN_CLUSTER_SIZE} for the distance test, "
            f"the sample {2 * ISOLATION_K_MIN} for the isolation test)"
        )
    return ", ".join(parts) + " (thresholds from the sample)"


def _names_apply(sample: StoreSample, report: Reporter) -> bool:
    """Names come from the bundled Lite0's classifier, which reads only that backbone's features."""
    from imgcluster.naming import NAMING_MODEL, is_naming_backbone

    if is_naming_backbone(sample.meta.identity):
        return True
    report.info(f"no cluster names: they need {NAMING_MODEL} features, and this store holds {sample.meta.model}'s")
    return False
