"""``imgcluster.cluster_folder`` and ``imgcluster.train_folder``: the pipelines behind ``assign`` and ``train``.

Scan, embed (cached), train a head or load one, assign, mark outliers, find near-duplicates;
the result is an :class:`Assignment` in memory, and files only when ``out`` is given.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster.atomic import check_stdout, check_writable, is_stream
from imgcluster.config import (
    DEFAULT_CLUSTERS,
    DEFAULT_KNN,
    DEFAULT_OBJECTIVE,
    AssignConfig,
    TrainConfig,
    sidecar_path,
    skipped_path,
    write_sidecar,
)
from imgcluster.errors import ImgclusterError, ParameterError, literal
from imgcluster.features import check_embedding_options, embed, embed_checked
from imgcluster.head_config import Training, check_flags
from imgcluster.kept import keeping_when
from imgcluster.models import OFFLINE_MODEL
from imgcluster.outliers import check_min_confidence
from imgcluster.outputs import check_head_name, refuse_folder_name, refuse_inputs, refuse_long_names, refuse_stdout
from imgcluster.preflight import check_inputs, parse_clusters
from imgcluster.progress import ProgressFn, Reporter, check_progress, count, keeping_warnings, skipped_files
from imgcluster.userpath import expand_home, path_argument

if TYPE_CHECKING:  # torch comes with these: imported once the arguments have been checked
    import pandas as pd

    from imgcluster.duplicates import DuplicateGroup
    from imgcluster.estimator import ClusterHead
    from imgcluster.fitting import FittedHead
    from imgcluster.naming import Naming
    from imgcluster.outliers import Outliers
    from imgcluster.pipeline import Embeddings

__all__ = ["Assignment", "cluster_folder", "train_folder"]

PathLike = str | os.PathLike[str]


@dataclass
class Assignment:
    """The clusters of a folder's images, with everything ``imgcluster assign`` writes about them.

    Row ``i`` is image ``paths[i]`` (relative to ``embeddings.folder``); ``columns`` holds the
    CSV's columns after path (cluster, confidence, cluster_name, outlier, outlier_reason and any
    explanation columns). :meth:`to_frame` gives them as a DataFrame, :meth:`write` as the CSV and its files.
    """

    paths: list[str]
    columns: dict[str, np.ndarray]
    outliers: Outliers
    min_confidence: float
    duplicates: list[DuplicateGroup] | None  # None unless near_duplicates was given
    near_duplicates: float | None
    embeddings: Embeddings
    head: Path | None  # the checkpoint used (trained by this run, or given); None: trained here and not kept
    objective: str
    n_clusters: int
    train: dict[str, Any] | None  # how the head was trained
    choose_k: dict[str, Any] | None  # the evidence for K when it was chosen automatically
    explain: bool = False
    warnings: list[str] = field(default_factory=list)  # every warning the run gave, as its progress heard them
    written: dict[str, Path] = field(default_factory=dict)  # what write() wrote: csv, sidecar, duplicates, skipped
    # cluster id -> the name the classifier would have given it, withheld as its images look too little like that class
    withheld_names: dict[int, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # The generated repr printed every path, column and outlier score: 19,000 characters for 125 images.
        return (
            f"Assignment({len(self.paths)} images of {str(self.embeddings.folder)!r} in {self.n_clusters} clusters "
            f"(sizes {self.cluster_sizes}), {self.objective}, {self.outliers.count} outliers)"
        )

    @property
    def cluster(self) -> np.ndarray:
        return self.columns["cluster"]

    @property
    def confidence(self) -> np.ndarray:
        return self.columns["confidence"]

    @property
    def cluster_sizes(self) -> dict[int, int]:
        labels, counts = np.unique(self.cluster, return_counts=True)
        return {int(k): int(v) for k, v in zip(labels, counts)}

    def duplicate_kinds(self) -> dict[str, int]:
        """How many near-duplicate group members are of each kind (exact, resized/re-encoded, similar)."""
        from imgcluster.duplicates import KINDS

        groups = self.duplicates or []
        return {kind: sum(g.kinds.count(kind) for g in groups) for kind in KINDS}

    @property
    def cluster_names(self) -> dict[int, str]:
        """Cluster id -> its name (empty without ``names``)."""
        if "cluster_name" not in self.columns:
            return {}
        return {int(k): str(n) for k, n in zip(self.cluster, self.columns["cluster_name"])}

    def to_frame(self) -> pd.DataFrame:
        """The CSV's rows as a DataFrame: path, cluster, confidence, outlier, outlier_reason, ..."""
        import pandas as pd

        return pd.DataFrame({"path": self.paths, **self.columns})

    def provenance(self, out: str | None = None, raw_csv: bool = False) -> dict[str, Any]:
        """What the sidecar JSON records: how the features, the head and the clusters were made."""
        duplicates = None
        if self.duplicates is not None:
            images = sum(len(g.members) for g in self.duplicates)
            where = self.written.get("duplicates")
            duplicates = {
                "threshold": self.near_duplicates, "groups": len(self.duplicates), "images": images, "kinds": self.duplicate_kinds(),
                "csv": _str(where),
            }  # fmt: skip
        names = "cluster_name" in self.columns
        assign = AssignConfig(str(self.embeddings.folder.resolve()), out or "", _str(self.head), self.explain, raw_csv, names)
        return {
            "assign": assign,
            "embed": self.embeddings.config,
            "train": self.train,
            "backbone": self.embeddings.identity,
            "compute": self.embeddings.compute,  # names the cache the features are in, with the backbone and dtype
            "runtime": self.embeddings.runtime,  # torch or onnx: also names the cache
            "head": {"path": _str(self.head), "objective": self.objective, "clusters": self.n_clusters},
            **({"choose_k": self.choose_k} if self.choose_k is not None else {}),
            "result": {
                "images": len(self.paths),
                "skipped": len(self.embeddings.skipped),
                "skipped_csv": _str(self.written.get("skipped")),
                "cluster_sizes": self.cluster_sizes,
                "outliers": {"min_confidence": self.min_confidence, **self.outliers.summary()},
                "near_duplicates": duplicates,
                **({"cluster_names": self.cluster_names, "withheld_names": self.withheld_names} if names else {}),
            },
        }

    def write(self, out: PathLike, progress: ProgressFn | None = None, *, raw_csv: bool = False) -> dict[str, Path]:
        """Write the CSV to ``out`` (``"-"``: standard output) and, beside a regular file, its
        sidecar ``.json``, the near-duplicate groups and the list of skipped files. Returns what
        was written; ``progress`` hears one line per file (stage ``write``). Text cells that a
        spreadsheet would run as a formula get a leading ``'`` unless ``raw_csv`` (see :mod:`imgcluster.csvfile`)."""
        out_path, beside = check_out(out, self.embeddings.folder, near_duplicates=self.near_duplicates)
        self.written = {}
        try:
            return self._write(out, out_path, beside, progress, raw_csv)
        except KeyboardInterrupt as exc:
            raise self._stopped_writing(exc, out, beside) from None

    def _stopped_writing(self, exc: KeyboardInterrupt, out: PathLike, beside: Path | None) -> KeyboardInterrupt:
        """What a stop while the files are written leaves (its line said "every finished batch is kept in
        the cache"). Each file is written whole or not at all; a CSV replaced without its sidecar loses the
        old sidecar, which described the CSV that was there before."""
        from imgcluster.signals import Interrupted

        if os.fspath(out) == "-":
            return Interrupted.wrap(exc, "interrupted while writing the CSV to standard output: what reached it is incomplete")
        if "csv" not in self.written:
            return Interrupted.wrap(exc, f"interrupted while writing {os.fspath(out)}: it was not written (a file there before stays)")
        if beside is not None and "sidecar" not in self.written:
            sidecar_path(beside).unlink(missing_ok=True)
        done = ", ".join(str(p) for p in self.written.values())
        return Interrupted.wrap(exc, f"interrupted while writing the files beside the CSV: {done} written, the others not (rerun for all)")

    def _write(
        self, out: PathLike, out_path: Path | None, beside: Path | None, progress: ProgressFn | None, raw_csv: bool
    ) -> dict[str, Path]:
        from imgcluster.assign import Assignment as Prediction
        from imgcluster.csvfile import write_assignments

        report = Reporter(progress, "write")
        extra = {k: v for k, v in self.columns.items() if k not in ("cluster", "confidence")}
        write_assignments(os.fspath(out), self.paths, Prediction(self.cluster, self.confidence, extra), raw_csv)
        self.written = {"csv": out_path} if out_path is not None else {}
        if self.duplicates is not None and beside is not None:
            from imgcluster.duplicates import duplicates_path, write_duplicates

            self.written["duplicates"] = write_duplicates(duplicates_path(beside), self.paths, self.duplicates, raw_csv)
            images = sum(len(g.members) for g in self.duplicates)
            report.info(
                f"{count(len(self.duplicates), 'near-duplicate group')} ({count(images, 'image')}, "
                f"cosine similarity >= {self.near_duplicates}: "
                + ", ".join(f"{n} {kind}" for kind, n in self.duplicate_kinds().items())
                + f") in {self.written['duplicates']}"
            )
        skipped = self.embeddings.write_skipped(beside, raw_csv)
        if skipped is not None:
            self.written["skipped"] = skipped
            report.warning(f"skipped {skipped_files(reason for _, reason in self.embeddings.skipped)}; details in {skipped}")
        if beside is not None:
            self.written["sidecar"] = write_sidecar(sidecar_path(beside), **self.provenance(os.fspath(out), raw_csv))
        if out_path is not None:
            report.info(f"wrote {count(len(self.paths), 'assignment')} to {out_path} ({count(len(self.cluster_sizes), 'cluster')})")
        return self.written


def check_out(
    out: PathLike, folder: Path, near_duplicates: float | None = None, inputs: dict[Path, str] | None = None
) -> tuple[Path | None, Path | None]:
    """Where the CSV goes (None: standard output) and what its other files go beside (None:
    nowhere, as for standard output, /dev/null or a pipe); refused, before any work, when it is
    a folder or an input of the run."""
    text = os.fspath(out)
    if not text:  # `--out "$OUT"` with OUT unset wrote the default file without a word
        raise ParameterError("{out} is empty: give a file name, or - for standard output")
    refuse_folder_name(text)
    out_path = None if text == "-" else Path(text)
    if out_path is None:
        check_stdout()
    else:
        refuse_long_names(text, [out_path])
    if out_path is not None and out_path.is_dir():
        raise ParameterError(f"{{out}} {text} is a folder; give a file name")
    # Files that describe the CSV (its .json, the skipped list, the report) go beside it: only
    # when it is a regular file, not stdout, /dev/null or a pipe.
    beside = out_path if out_path is not None and not is_stream(out_path) else None
    if near_duplicates is not None and beside is None:
        where = "stdout" if out_path is None else f"{text}, which is not a regular file"
        raise ParameterError(f"{{near_duplicates}} needs {{out}} FILE: its CSV is written beside the CSV, not beside {where}")
    if out_path is not None:
        refuse_inputs(out_path, inputs or {}, folder)
    if beside is not None:  # a folder where a file beside the CSV goes failed after the whole run, the CSV written
        companions = [sidecar_path(beside), skipped_path(beside)]
        if near_duplicates is not None:
            from imgcluster.duplicates import duplicates_path

            companions.append(duplicates_path(beside))
        refuse_long_names(text, companions)
        for companion in companions:
            if os.path.isdir(companion):  # False for a name too long to exist: a file that may never be written
                raise ParameterError(f"{{out}} {literal(text)}: {literal(companion)}, which goes beside it, is a folder")
    return out_path, beside


@keeping_when(OFFLINE_MODEL, "names")  # the naming pass reuses the embedding's Lite0 (imgcluster.naming.NAMING_MODEL)
def cluster_folder(
    folder: PathLike,
    *,
    out: PathLike | None = None,
    head: PathLike | None = None,
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
    min_confidence: float = 0.0,
    near_duplicates: float | None = None,
    explain: bool = False,
    names: bool = True,
    model: str = "auto",
    weights: PathLike | None = None,
    cache_dir: PathLike | None = None,
    embed_batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    dtype: str = "float16",
    follow_symlinks: bool = False,
    compile_model: bool = False,
    lock_timeout: float = 0.0,
    rehash: bool = False,
    reembed: bool = False,
    runtime: str = "auto",
    raw_csv: bool = False,
    progress: ProgressFn | None = None,
) -> Assignment:
    """Cluster every image in ``folder``: what ``imgcluster assign`` does, returned in memory.

    Trains a head on the (cached) features, saved in the cache, or uses the checkpoint ``head``
    (then the training parameters do not apply). ``out`` also writes the CSV and the files
    beside it (:meth:`Assignment.write`); it is checked before any work. ``near_duplicates``
    (a cosine similarity in (0, 1]) also finds groups of near-identical images. The training and
    embedding parameters are those of :class:`ClusterHead` and :func:`imgcluster.embed`, but for the
    objective's own options, which go in a dict (``objective_options={"hidden": 64}``);
    ``raw_csv`` writes CSV cells without the formula escape; ``names`` adds a ``cluster_name``
    column from the bundled EfficientNet-Lite0's ImageNet classes (:mod:`imgcluster.naming`: from
    the cached features with that model, by one extra cached Lite0 pass with any other; empty for a
    cluster whose images look too little like the class it would name, :data:`imgcluster.naming.LIKENESS`);
    ``progress`` receives every stage's :class:`imgcluster.progress.Event`.
    """
    training = Training.of(locals())
    if near_duplicates is not None and (
        isinstance(near_duplicates, bool) or not isinstance(near_duplicates, numbers.Real) or not 0.0 < near_duplicates <= 1.0
    ):
        raise ParameterError(f"{{near_duplicates}} is a cosine similarity in (0, 1], got {near_duplicates!r}")
    check_min_confidence(min_confidence)  # before the embedding, not after the training
    check_embedding_options(embed_batch_size, workers, lock_timeout, dtype)
    check_flags(
        explain=explain, names=names, follow_symlinks=follow_symlinks, compile_model=compile_model, rehash=rehash, reembed=reembed,
        raw_csv=raw_csv,
    )  # fmt: skip
    check_progress(progress)
    folder, out, head = path_argument(folder, "folder", "a folder"), expand_home(out), expand_home(head)
    weights, cache_dir = expand_home(weights), expand_home(cache_dir)
    if out is not None:  # the arguments first, then what the folder holds
        check_out(out, Path(folder), near_duplicates)
    listing = check_inputs(
        folder, model, n_clusters=n_clusters if head is None else None, follow_symlinks=follow_symlinks, cache_dir=cache_dir,
        weights=weights, head=head, k_range=(k_min, k_max),
    )  # fmt: skip
    from imgcluster.checkpoint import check_backbone, checkpoint_json, load_checkpoint
    from imgcluster.head_config import option_dict
    from imgcluster.naming import NAMING_MODEL, is_naming_backbone
    from imgcluster.pipeline import resolve_device

    progress, warnings = keeping_warnings(progress)
    dev = resolve_device(device)
    if head is None:  # the training parameters are checked now, not after the embedding
        settings = training.config(option_dict(objective_options))
    head_meta: dict[str, Any] | None = None
    searched: tuple[np.ndarray, np.ndarray] | None = None  # the neighbour search of a head trained in this run
    if head is not None:
        trained_objective, head_meta = load_checkpoint(Path(head))
        if model == "auto" and weights is None:
            model = head_meta.get("backbone", {}).get("model", model)
    if out is not None:
        inputs = {Path(head): "the head checkpoint", checkpoint_json(Path(head)): "the head's description"} if head is not None else {}
        out_path, _ = check_out(out, Path(folder), near_duplicates, inputs)
        if out_path is not None:
            check_writable(out_path)  # fail before the embedding, not after it
    embeddings = embed_checked(
        Path(folder), None, model, listing=listing, weights=weights, cache_dir=cache_dir, device=device, dtype=dtype,
        embed_batch_size=embed_batch_size, workers=workers, follow_symlinks=follow_symlinks, compile_model=compile_model,
        lock_timeout=lock_timeout, rehash=rehash, reembed=reembed, runtime=runtime, progress=progress,
    )  # fmt: skip
    head_path: Path | None  # None: trained by this run and not kept
    if head_meta is not None:
        assert head is not None  # head_meta comes from it
        head_path = Path(head)
        if int(head_meta["feature_dim"]) != embeddings.features.shape[1]:
            raise ImgclusterError(
                f"head {head} expects {head_meta['feature_dim']}-d features but {embeddings.model} gives "
                f"{embeddings.features.shape[1]}-d; use {{model}} {head_meta.get('backbone', {}).get('model', '?')}"
            )
        check_backbone(head_meta, embeddings.identity, head_path)
        choice, train = head_meta.get("choose_k"), head_meta.get("train")
    elif (before := _trained_before(embeddings, settings, parse_clusters(n_clusters) is None, progress)) is not None:
        head_path, trained_objective = before
        choice, train = None, asdict(settings)
    else:  # trained here, without scikit-learn's estimator (imgcluster.fitting says why)
        from imgcluster.fitting import fit_head
        from imgcluster.outliers import isolation_k

        def fit() -> FittedHead:
            return fit_head(
                _finite(embeddings.features), settings, dev, auto=parse_clusters(n_clusters) is None, k_min=k_min, k_max=k_max,
                seed=seed, embeddings=embeddings, progress=progress, search_k=isolation_k(len(embeddings.features)),
            )  # fmt: skip

        head_path, fitted = _train(fit, embeddings, None, progress, keep_optional=True)
        trained_objective, choice, train = fitted.objective, fitted.choose_k, asdict(fitted.config)
        searched = fitted.knn  # one neighbour search for training and the isolation test
    if not embeddings.paths:
        raise ImgclusterError(f"none of the images in {folder} could be read")
    stage, extra_pass = "assign", False  # extra_pass: the naming pass embeds with NAMING_MODEL, for another backbone's folder
    try:
        result = _assign(embeddings, trained_objective, dev, explain, min_confidence, near_duplicates, progress, searched)
        if names:
            stage = "name"
            columns = result["columns"]
            named = _names_of_negatives(embeddings, columns["cluster"], progress)
            if named is None:
                naming = embeddings
                if not is_naming_backbone(embeddings.identity):
                    Reporter(progress, "assign").info(f"naming the clusters takes one extra pass with {NAMING_MODEL} (cached)")
                    extra_pass = True
                    naming = embed(
                        embeddings.folder, NAMING_MODEL, cache_dir=cache_dir, device=device, dtype=dtype,
                        embed_batch_size=embed_batch_size, workers=workers, follow_symlinks=follow_symlinks,
                        lock_timeout=lock_timeout, runtime=runtime, progress=progress,
                    )  # fmt: skip
                named = _names(embeddings.paths, columns["cluster"], naming)
            name = {"cluster_name": _shown(named, columns["cluster"], progress)}
            result["withheld_names"] = named.withheld
            result["columns"] = {**{k: columns[k] for k in ("cluster", "confidence")}, **name, **columns}  # in the CSV's order
    except KeyboardInterrupt as exc:
        reused = head_path if head is not None or parse_clusters(n_clusters) is not None else None  # K auto: chosen again
        raise _stopped_after_training(exc, stage, embeddings, reused, extra_pass) from None
    assignment = Assignment(
        paths=embeddings.paths, min_confidence=min_confidence, near_duplicates=near_duplicates, embeddings=embeddings,
        head=head_path, objective=trained_objective.name, n_clusters=trained_objective.n_clusters, train=train,
        choose_k=choice, explain=explain, warnings=warnings, **result,
    )  # fmt: skip
    if out is not None:
        assignment.write(out, progress, raw_csv=raw_csv)
    return assignment


def _assign(
    embeddings: Embeddings, objective: Any, device: Any, explain: bool, min_confidence: float, near_duplicates: float | None,
    progress: ProgressFn | None, knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Clusters, confidence, outliers and near-duplicates, with a warning when the head knows nothing; ``knn`` is the
    neighbour search training ran (the isolation test reuses it)."""
    from imgcluster.assign import mark_outliers, predict

    report = Reporter(progress, "assign")
    prediction = predict(objective, embeddings.features, device, explain=explain)
    chance = 1.0 / objective.n_clusters
    top = float(prediction.confidence.max())
    if top < chance + 0.01:
        report.warning(
            f"the head is no surer of any image than chance (confidence at most {top:.3f}, "
            f"chance {chance:.3f}): these clusters mean nothing; try more images or fewer {{n_clusters}}"
        )
    found = mark_outliers(prediction, embeddings.features, min_confidence, use_gpu=device.type == "cuda", neighbours=knn)
    n = len(embeddings.paths)
    report.info(f"{count(found.count, 'outlier')} of {n} ({100 * found.count / max(1, n):.0f}%): {_outlier_tally(found, min_confidence)}")
    duplicates = None
    if near_duplicates is not None:
        from imgcluster.duplicates import find_near_duplicates

        files = [embeddings.folder / p for p in embeddings.paths]  # candidate pairs are confirmed from their pixels
        duplicates = find_near_duplicates(embeddings.features, near_duplicates, use_gpu=device.type == "cuda", files=files)
    columns = {"cluster": prediction.cluster, "confidence": prediction.confidence, **dict(sorted(prediction.extra.items()))}
    return {"columns": columns, "outliers": found, "duplicates": duplicates}


def _outlier_tally(found: Outliers, min_confidence: float) -> str:
    """What each outlier test found, naming only the tests that ran (a small folder's clusters get none)."""
    from imgcluster.outliers import ISOLATION_K_MIN, MIN_CLUSTER_SIZE

    parts = [f"{int(found.low_confidence.sum())} below {{min_confidence}} {min_confidence}"] if min_confidence > 0 else []
    if any(np.isfinite(t) for t in found.thresholds.values()):
        parts.append(f"{int(found.far_from_centre.sum())} far from their cluster's centre")
    if np.isfinite(found.isolation_threshold):
        parts.append(f"{int(found.isolated.sum())} isolated from the rest")
    if not parts:
        parts.append(
            f"too few images for the outlier tests (a cluster needs {MIN_CLUSTER_SIZE} for the distance test, "
            f"the folder {2 * ISOLATION_K_MIN} for the isolation test)"
        )
    return ", ".join(parts)


STOPPED_AFTER_TRAINING = {  # stage -> (what it was doing, where the next run starts)
    "assign": ("assigning the clusters (confidence, outliers, near-duplicates)", "the assignment"),
    "name": ("naming the clusters", "the naming"),
}


def _stopped_after_training(
    exc: KeyboardInterrupt, stage: str, embeddings: Embeddings, head: Path | None, extra_pass: bool
) -> KeyboardInterrupt:
    """What a stop after the training keeps (its line said "every finished batch is kept", or "N of
    M files are saved in the cache", as if the embedding had been stopped). ``head``: the checkpoint
    the next run reuses, if any."""
    from imgcluster.naming import NAMING_MODEL
    from imgcluster.signals import Interrupted

    doing, resumes = STOPPED_AFTER_TRAINING[stage]
    kept = f"the features of all {count(len(embeddings.paths), 'image')} stay cached in {embeddings.cache_dir}"
    again = f"from {resumes}" if head is not None else "from the training"
    if head is not None:
        kept += f" and the head in {head}"
    if extra_pass:
        again += f" ({NAMING_MODEL}'s pass for the names resumes where it stopped)"
    message = f"interrupted while {doing}: no CSV was written by this run; {kept}, so the same command starts again {again}"
    return Interrupted.wrap(exc, message)


def _shown(naming: Naming, clusters: np.ndarray, progress: ProgressFn | None) -> np.ndarray:
    """The ``cluster_name`` column, saying which clusters got no name and what the classifier would have called them."""
    from imgcluster.naming import name_column, say_withheld

    say_withheld(naming, progress)
    return name_column(naming.names, clusters)


def _names_of_negatives(embeddings: Embeddings, clusters: np.ndarray, progress: ProgressFn | None) -> Naming | None:
    """The names from the classifier's view of a sample shown inverted, when the folder is drawn light
    on black (:mod:`imgcluster.negatives`); None for any other folder."""
    from imgcluster.negatives import drawing_names, onnx_lite0

    def say(shown: int) -> None:
        Reporter(progress, "assign").info(
            f"the images are drawn light on black: the clusters are named from {count(shown, 'image')} shown inverted, "
            "as photos show such things"
        )

    return drawing_names(
        embeddings.folder, embeddings.paths, clusters, embeddings.cache_dir, say, features=embeddings.features,
        onnx=onnx_lite0(embeddings.runtime, embeddings.identity),
    )  # fmt: skip


def _names(paths: list[str], clusters: np.ndarray, naming: Embeddings) -> Naming:
    """Each cluster's name, from the Lite0 features of the rows ``naming`` has (all of them
    unless a file changed between the two passes)."""
    from imgcluster.naming import name_clusters

    row = {p: i for i, p in enumerate(naming.paths)}
    have = [i for i, p in enumerate(paths) if p in row]
    features = naming.features[[row[paths[i]] for i in have]]
    return name_clusters(features, clusters[have])


def _trained_before(embeddings: Embeddings, settings: TrainConfig, auto: bool, progress: ProgressFn | None) -> tuple[Path, Any] | None:
    """(path, objective) of the head an earlier run trained with ``settings`` on exactly these
    images and features (its name covers all of them), so that a rerun need not train again:
    trained again, it would be the same head (training is deterministic on the CPU). None when
    K is ``auto`` (chosen while training), or when no such head is saved or it cannot be read."""
    from imgcluster.checkpoint import load_checkpoint
    from imgcluster.pipeline import head_path_for

    if auto or len(embeddings.paths) < 2:
        return None
    path = head_path_for(embeddings.cache_dir, settings, embeddings.paths, embeddings.features)
    if not path.is_file():
        return None
    try:
        objective, meta = load_checkpoint(path)
    except ImgclusterError:
        return None  # damaged or half-written: trained again, and replaced
    if meta.get("train") != json.loads(json.dumps(asdict(settings), default=str)) or meta.get("images") != len(embeddings.paths):
        return None
    Reporter(progress, "train").info(f"reusing the head trained before on these features and settings: {path}")
    return path, objective


def _train(
    fit: Callable[[], FittedHead], embeddings: Embeddings, out: Path | None, progress: ProgressFn | None, keep_optional: bool = False
) -> tuple[Path | None, FittedHead]:
    """Fit a head on the cached features with ``fit`` and save it (in the cache unless ``out``); returns its path and the head.

    With ``keep_optional`` (``assign``, whose product is the CSV) a head that cannot be saved, as
    in a read-only shared cache, is a warning and the path None: the whole run used to fail there,
    after the training, though that cache's features are read and its missing ones embedded.
    """
    from imgcluster.checkpoint import save_checkpoint
    from imgcluster.pipeline import head_path_for
    from imgcluster.signals import Interrupted

    if len(embeddings.paths) < 2:  # the files were found, so the rest were skipped: it said not why, and wrote no list
        why = ""
        if embeddings.skipped:
            rel, reason = embeddings.skipped[0]
            why = f": {len(embeddings.paths)} embedded, {len(embeddings.skipped)} skipped (e.g. {literal(rel)}: {reason})"
        raise ImgclusterError(f"need at least two images to cluster{why}")
    if out is None and not keep_optional:  # a read-only cache: said before the training, not after it
        heads = head_path_for(embeddings.cache_dir, TrainConfig()).parent
        try:
            check_writable(heads / "head.safetensors")
        except ImgclusterError as exc:
            raise ImgclusterError(f"cannot save the head in the cache: {exc}; give it a file of its own with {{out}}") from None
    try:
        fitted = fit()
    except KeyboardInterrupt as exc:
        raise Interrupted.wrap(
            exc,
            f"interrupted while training: the features of all {len(embeddings.paths)} images stay cached in {embeddings.cache_dir}; "
            "no head or CSV was written by this run, the next run trains again from the cached features",
        ) from None
    path = out or head_path_for(embeddings.cache_dir, fitted.config, embeddings.paths, embeddings.features)
    try:
        save_checkpoint(path, fitted.objective, fitted.description)
    except ImgclusterError as exc:
        if not keep_optional:
            raise
        Reporter(progress, "train").warning(f"the head is not kept ({exc}); the next run trains it again")
        return None, fitted
    Reporter(progress, "train").info(f"head saved to {path}")
    return path, fitted


def _finite(features: np.ndarray) -> np.ndarray:
    """``features`` when every value is finite (what scikit-learn's checks refused before training)."""
    if not np.isfinite(features).all():
        raise ImgclusterError("the features contain NaN or infinite values; embed the folder again with {reembed}")
    return features


def train_folder(
    folder: PathLike,
    *,
    out: PathLike | None = None,
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
    model: str = "auto",
    weights: PathLike | None = None,
    cache_dir: PathLike | None = None,
    embed_batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    dtype: str = "float16",
    follow_symlinks: bool = False,
    compile_model: bool = False,
    lock_timeout: float = 0.0,
    rehash: bool = False,
    reembed: bool = False,
    runtime: str = "auto",
    raw_csv: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[ClusterHead, Path]:
    """Embed ``folder`` (cached) and train a head on it: what ``imgcluster train`` does.

    The checkpoint goes to ``out``, or into the folder's cache; returns the fitted head and that
    path. Files that could not be read are listed in the cache's ``skipped.csv``.
    """
    training = Training.of(locals())
    check_embedding_options(embed_batch_size, workers, lock_timeout, dtype)
    check_flags(follow_symlinks=follow_symlinks, compile_model=compile_model, rehash=rehash, reembed=reembed, raw_csv=raw_csv)
    check_progress(progress)
    folder, out = path_argument(folder, "folder", "a folder"), expand_home(out)
    weights, cache_dir = expand_home(weights), expand_home(cache_dir)
    listing = check_inputs(
        folder, model, n_clusters=n_clusters, follow_symlinks=follow_symlinks, cache_dir=cache_dir, weights=weights, k_range=(k_min, k_max)
    )
    from imgcluster.estimator import checked_head

    estimator = checked_head(training, device=device, objective_options=objective_options)
    if out is not None:
        refuse_stdout(out, "out", "a head checkpoint (two files)")
        refuse_folder_name(out)
        refuse_long_names(out, [Path(out)])  # its .json is shorter
        if not os.fspath(out) or Path(out).is_dir():  # it failed after the training: "cannot write ."
            raise ParameterError(f"{{out}} {literal(os.fspath(out) or repr(''))} is a folder; give a file name")
        check_head_name(out, "out")  # it was saved, then refused by the assign --head that the run's last line suggested
        refuse_inputs(Path(out), folder=Path(folder))
        check_writable(Path(out))
    embeddings = embed_checked(
        Path(folder), None, model, listing=listing, weights=weights, cache_dir=cache_dir, device=device, dtype=dtype,
        embed_batch_size=embed_batch_size, workers=workers, follow_symlinks=follow_symlinks, compile_model=compile_model,
        lock_timeout=lock_timeout, rehash=rehash, reembed=reembed, runtime=runtime, progress=progress,
    )  # fmt: skip
    skipped = embeddings.write_skipped(raw_csv=raw_csv)
    if skipped is not None:
        Reporter(progress, "embed").warning(f"skipped {skipped_files(reason for _, reason in embeddings.skipped)}; details in {skipped}")
    from imgcluster.fitting import FittedHead

    _finite(embeddings.features)  # scikit-learn's own refusal named neither the features nor the cure

    def fit() -> FittedHead:
        estimator.fit(embeddings, progress=progress)
        return FittedHead(estimator.objective_, estimator.train_config_, estimator.history_, estimator.choose_k_, estimator.description_)

    saved, _ = _train(fit, embeddings, Path(out) if out is not None else None, progress)
    assert saved is not None  # saving is what train_folder is for: a failure raised
    return estimator, saved


def _str(value: Path | None) -> str | None:
    return None if value is None else str(value)
