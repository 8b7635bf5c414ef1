"""``imgcluster.ClusterHead``: a clustering head on a feature array, as a scikit-learn estimator.

It trains one of the objectives (``imgcluster objectives``) on the features' nearest-neighbour
pairs, exactly as ``imgcluster train`` does, and saves and loads the same checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from imgcluster.config import DEFAULT_CLUSTERS, DEFAULT_KNN, DEFAULT_OBJECTIVE, TrainConfig
from imgcluster.errors import ImgclusterError, ParameterError, literal
from imgcluster.head_config import TRAINING, Training
from imgcluster.pipeline import Embeddings
from imgcluster.progress import ProgressFn, check_progress
from imgcluster.userpath import expand_home

__all__ = ["ClusterHead"]

# The constructor's own parameters; any other keyword is one of the objective's options.
_OWN = (*TRAINING, "device")


class ClusterHead(ClusterMixin, BaseEstimator):
    """Cluster rows of ``X`` (image features) into ``n_clusters`` groups with a self-supervised head.

    ``n_clusters="auto"`` chooses K between ``k_min`` and ``k_max`` from the features
    (:mod:`imgcluster.choose_k`). ``epochs=None`` trains 30 epochs, or more on small inputs to
    reach 300 optimiser steps, and stops earlier once the clusters settle (see
    ``TrainConfig.stable_fraction``); a number is trained as given. ``balance``, ``self_label`` and
    ``uco`` are the shortcuts of ``imgcluster assign``; any other keyword is an option of the
    objective (``imgcluster objectives`` lists them), e.g. ``ClusterHead("scan", hidden=64)``.
    ``device`` is ``auto``, ``cpu`` or ``cuda``. Values are checked by :meth:`fit`, before any training, as
    scikit-learn's conventions ask; :meth:`set_params` refuses an unknown name at once, as scikit-learn's does.

    After :meth:`fit`: ``labels_``, ``n_clusters_``, ``n_features_in_`` (and ``feature_names_in_``
    for a DataFrame), ``objective_`` (the trained torch module), ``history_`` (loss per epoch),
    ``choose_k_`` (the evidence for an ``auto`` K, else None). A head from :meth:`load` has them
    all but ``labels_`` (it saw no rows). A fitted head pickles; :meth:`save` writes the checkpoint
    ``imgcluster assign --head`` reads, whose loading runs no code from the file.
    """

    def __init__(
        self,
        objective: str = DEFAULT_OBJECTIVE,
        n_clusters: int | str = DEFAULT_CLUSTERS,
        seed: int = 0,
        *,
        epochs: int | None = None,
        batch_size: int = TrainConfig.batch_size,
        lr: float = TrainConfig.lr,
        knn: int = DEFAULT_KNN,
        k_min: int = 2,
        k_max: int = 20,
        balance: float | None = None,
        self_label: bool = False,
        uco: bool = False,
        device: str = "auto",
        **objective_options: Any,
    ) -> None:
        self.objective = objective
        self.n_clusters = n_clusters
        self.seed = seed
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.knn = knn
        self.k_min = k_min
        self.k_max = k_max
        self.balance = balance
        self.self_label = self_label
        self.uco = uco
        self.device = device
        for key, value in objective_options.items():  # each its own attribute, as scikit-learn expects
            setattr(self, key, value)

    # ---- parameters ----------------------------------------------------------------------
    def _objective_options(self) -> dict[str, Any]:
        """The objective's own options given to the constructor or :meth:`set_params`."""
        return {k: v for k, v in vars(self).items() if k not in _OWN and not k.startswith("_") and not k.endswith("_")}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in _OWN}, **self._objective_options()}

    def set_params(self, **params: Any) -> ClusterHead:
        """Set constructor parameters, or options of the objective (the one these ``params`` set, else
        the head's), by name. A name that is neither is refused at once with a :class:`ParameterError`
        (a ValueError, as scikit-learn's own ``set_params`` raises); values are checked by :meth:`fit`,
        as scikit-learn's conventions ask."""
        objective = params.get("objective", self.objective)
        known = {*_OWN, *self._objective_options(), *_option_names(objective)}
        unknown = [key for key in params if key not in known]
        if unknown:
            options = _option_names(objective)
            theirs = f"; the options of objective {objective!r}: {', '.join(options)}" if options else f"; {objective!r} is no objective"
            names = ", ".join(map(repr, unknown))
            raise ParameterError(
                literal(f"{type(self).__name__} has no parameter {names}; its parameters: {', '.join(_OWN)}{theirs}"), parameter=unknown[0]
            )
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def train_config(self) -> TrainConfig:
        """The training settings these parameters give, checked (unknown options, values out of
        range), so that mistakes surface before any slow work. With ``n_clusters="auto"`` its K
        is a stand-in: :meth:`fit` chooses the real one."""
        return Training.of(vars(self)).config(self._objective_options())

    # ---- fitting and predicting ----------------------------------------------------------
    def fit(self, X: Any, y: None = None, *, progress: ProgressFn | None = None, neighbours: np.ndarray | None = None) -> ClusterHead:
        """Train on the rows of ``X`` ([n_samples, n_features], or :class:`imgcluster.Embeddings`,
        whose backbone then goes into the checkpoint). ``y`` is ignored. ``progress`` receives
        the events of stages ``choose_k`` and ``train``. ``neighbours`` ([n_samples, >= knn] row
        indices, nearest first) replaces the kNN search, for inputs whose search runs elsewhere
        (:mod:`imgcluster.scale.knn`)."""
        before = dict(self.__dict__)
        try:
            return self._fit(X, progress, neighbours)
        except BaseException:
            # A refused or interrupted refit (Ctrl-C in a notebook) leaves the head it had, not a
            # mix: scikit-learn's checks reset n_features_in_ before training, so the old head
            # refused the features it was trained on and crashed in torch on the new ones.
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _fit(self, X: Any, progress: ProgressFn | None, neighbours: np.ndarray | None) -> ClusterHead:
        from imgcluster.fitting import fit_head
        from imgcluster.pipeline import resolve_device

        check_progress(progress)
        embeddings = X if isinstance(X, Embeddings) else None
        # Two rows and two columns at least: one image has no neighbour, 1-d unit vectors are +-1.
        features = self._rows(embeddings.features if embeddings else X, ensure_min_samples=2, ensure_min_features=2)
        device = resolve_device(self.device)
        fitted = fit_head(
            features, self.train_config(), device, auto=parse_auto(self.n_clusters), k_min=self.k_min, k_max=self.k_max,
            seed=self.seed, embeddings=embeddings, progress=progress, neighbours=neighbours,
        )  # fmt: skip
        self.objective_ = fitted.objective
        self.device_ = device
        self.n_clusters_ = fitted.config.clusters
        self.train_config_ = fitted.config
        self.history_ = fitted.history
        self.choose_k_ = fitted.choose_k
        self.description_ = fitted.description
        self.labels_ = self._predict_proba(features).argmax(1)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The most probable cluster of each row."""
        return np.asarray(self.predict_proba(X).argmax(1), dtype=np.int64)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Each row's probability of each cluster, [n_samples, n_clusters_] (rows sum to 1). Embeddings of
        another backbone than the one the head was fitted on (when it was fitted on Embeddings) are refused."""
        check_is_fitted(self, "objective_")
        if isinstance(X, Embeddings):  # as assign --head: another backbone's features of the same width mean nothing here
            from imgcluster.checkpoint import check_backbone

            check_backbone(self.description_, X.identity, type(self).__name__)
        return self._predict_proba(self._rows(X.features if isinstance(X, Embeddings) else X, reset=False))

    def _rows(self, X: Any, **checks: Any) -> np.ndarray:
        """``X`` as float32 rows, through scikit-learn's input checks; a value they refuse (NaN, a
        wrong width, no rows), or a row too long to normalise, is a :class:`imgcluster.ParameterError`
        naming ``X``, in one line: a bare ValueError escaped ``except ImgclusterError`` and advised
        HistGradientBoosting."""
        from imgcluster.neighbours import MAX_ROW_LENGTH, first_too_long

        try:
            rows = np.asarray(validate_data(self, X, dtype=np.float32, **checks))
        except ValueError as exc:
            if isinstance(exc, ImgclusterError):
                raise
            line = str(exc).strip().split("\n", 1)[0].rstrip(":")
            raise ParameterError(literal(line if " X " in f" {line} " else f"X: {line}"), parameter="X") from exc
        too_long = first_too_long(rows)
        if too_long is not None:
            row, length = too_long
            raise ParameterError(
                f"X row {row} is too long to normalise (length {length:.3g}; float32 holds at most {MAX_ROW_LENGTH:.3g}): "
                "scale the features down",
                parameter="X",
            )
        return rows

    def _predict_proba(self, features: np.ndarray) -> np.ndarray:
        from imgcluster.assign import probabilities

        blocks = [p.float().cpu().numpy() for _, p in probabilities(self.objective_, features, self.device_)]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.n_clusters_), np.float32)

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the head as ``path`` (safetensors weights) and ``path`` with ``.json`` (how it was
        trained); ``imgcluster assign --head`` and :meth:`load` read it. Returns the JSON's path."""
        from imgcluster.checkpoint import save_checkpoint
        from imgcluster.outputs import check_head_name

        check_is_fitted(self, "objective_")
        path = expand_home(path)
        check_head_name(Path(path), "path")
        return save_checkpoint(Path(path), self.objective_, self.description_)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto") -> ClusterHead:
        """A head saved by :meth:`save`, ``imgcluster train`` or ``imgcluster assign``, ready to predict.

        Damaged, edited or mixed-up files are refused (:class:`imgcluster.ImgclusterError`).
        """
        from imgcluster.checkpoint import load_checkpoint
        from imgcluster.pipeline import resolve_device

        objective, meta = load_checkpoint(Path(expand_home(path)), "path")
        train = meta.get("train") or {}
        # Epochs given when training (no minimum of steps) are kept, so that clone(head).fit trains as it did.
        epochs = {"epochs": train["epochs"]} if train.get("min_steps") == 0 and "epochs" in train else {}
        head = cls(
            objective.name, objective.n_clusters, int(train.get("seed", 0)),
            **{k: train[k] for k in ("batch_size", "lr", "knn") if k in train}, **epochs,
            device=device, **dict(train.get("objective_options") or {}),
        )  # fmt: skip
        head.objective_ = objective
        head.device_ = resolve_device(device)
        head.n_clusters_ = objective.n_clusters
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        head.train_config_ = TrainConfig(**{k: v for k, v in train.items() if k in known})
        head.n_features_in_ = int(meta["feature_dim"])
        head.history_ = meta.get("history", [])
        head.choose_k_ = meta.get("choose_k")
        head.description_ = meta
        return head


def _option_names(objective: object) -> tuple[str, ...]:
    """The options of ``objective`` by name; none for a name that is no objective (fit says so)."""
    from imgcluster.objectives import list_objectives, objective_class

    if not isinstance(objective, str) or objective not in list_objectives():
        return ()
    return tuple(f.name for f in dataclasses.fields(objective_class(objective).Params))


def parse_auto(n_clusters: int | str) -> bool:
    return isinstance(n_clusters, str) and n_clusters.strip().lower() == "auto"


def checked_head(training: Training, *, device: str, objective_options: dict[str, Any] | None) -> ClusterHead:
    """The head to train, its parameters checked before any image is embedded or any row read
    (``imgcluster.train_folder`` and the feature-store commands build their heads here)."""
    from imgcluster.head_config import option_dict

    estimator = ClusterHead(**training.arguments(), device=device, **option_dict(objective_options))
    estimator.train_config()
    return estimator
