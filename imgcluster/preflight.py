"""Checks that need no features, made before torch is imported and before anything is embedded.

A missing folder, a mistyped model or more clusters than images should cost a fraction of a
second, not the seconds of importing torch plus the minutes of embedding a folder first. The
image count here is the scan's (an upper bound: files that turn out unreadable are only known
after decoding), so the checks after embedding stay as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from imgcluster.errors import ImgclusterError, ParameterError, literal
from imgcluster.listing import IMAGE_EXTENSIONS, ImageFile, list_images
from imgcluster.models import check_model_name
from imgcluster.userpath import expand_home


@dataclass
class FolderListing:
    """What a run on a folder reads: its image files, and what the scan left out or could not reach."""

    files: list[ImageFile]
    unsupported: list[str] = field(default_factory=list)  # files in formats imgcluster cannot read
    unreachable: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    outside: list[str] = field(default_factory=list)  # symbolic links left out: they lead outside the folder


def list_folder(folder: Path, cache_dir: str | os.PathLike[str] | None = None, follow_symlinks: bool = False) -> FolderListing:
    """The one scan of a run: the images under ``folder``, leaving out the folder's cache (and a
    shared cache root that lies inside it). The preflight checks count these files and the
    embedding reads them, so a large folder is walked once."""
    from imgcluster.cache import default_cache_root, shared_cache_root

    cache = os.fspath(cache_dir) if cache_dir is not None else None
    shared = shared_cache_root(cache)  # may lie inside FOLDER, holding other folders' caches
    excluded = (default_cache_root(folder, cache), *([shared] if shared else []))
    listing = FolderListing([])
    listing.files = list_images(
        folder, follow_symlinks=follow_symlinks, exclude=excluded, unsupported=listing.unsupported, unreachable=listing.unreachable,
        outside=listing.outside,
    )  # fmt: skip
    return listing


def outside_links(links: list[str], count: int | None = None) -> str:
    """What to say of symbolic links the scan left out: a folder of links into a dataset elsewhere
    was found empty (or smaller) without a word of why. ``count``: how many, when ``links`` holds
    only the first (a listing in pieces counts them where they are met)."""
    first = literal(links[0])
    n = len(links) if count is None else count
    return f"left out {n} symbolic link(s) that lead outside the folder (first: {first}); {{follow_symlinks}} follows them"


def check_folder(folder: Path) -> Path:
    if not folder.exists():
        raise ParameterError(f"folder not found: {literal(folder)}", "folder")
    if not folder.is_dir():
        raise ParameterError(f"not a folder: {literal(folder)}", "folder")
    return folder


def check_exists(path: str | os.PathLike[str] | None, parameter: str, what: str) -> None:
    """A file the run reads (weights, a head) that does not exist is refused now, in the words the
    loader uses; it was found missing only after torch had been imported (4.7 s here)."""
    if path is not None and not os.path.exists(path):
        raise ParameterError(f"{what} not found: {literal(path)}", parameter)


DTYPES = ("float16", "float32")  # what the cache stores features as
_TORCH_SAVE_STARTS = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive, or (before torch 1.6) a pickle


def check_dtype(dtype: object) -> None:
    """Refused with the other cheap checks: it was refused only after the folder's scan."""
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ParameterError(f"{{dtype}} must be float16 or float32, not {literal(repr(dtype))}")


def check_weights_file(weights: str | os.PathLike[str] | None) -> None:
    """A weights path that is missing, a folder, or plainly not weights is refused before torch:
    a folder was refused after the scan as "not found", a text file after the model's build.

    Only the start is read: a safetensors file's header (a length, then that much JSON), or
    torch.save's first bytes. A file that passes can still fail to load (damaged tensors, another
    model's weights); the loader says so then.
    """
    if weights is None:
        return
    check_exists(weights, "weights", "weights file")
    path = Path(weights)
    if not path.is_file():
        raise ParameterError(f"{{weights}} {literal(path)} is not a file", "weights")
    not_weights = ImgclusterError(f"cannot read weights {literal(path)}: it is not a safetensors file or a PyTorch state dict")
    try:
        with open(path, "rb") as handle:
            start = handle.read(8)
            if path.suffix != ".safetensors":
                if not start.startswith(_TORCH_SAVE_STARTS):
                    raise not_weights
                return
            length = int.from_bytes(start, "little") if len(start) == 8 else -1
            if not 2 <= length <= path.stat().st_size - 8:
                raise not_weights
            header = handle.read(min(length, 1 << 20))  # the opening brace and the first entry are enough
    except OSError as exc:
        raise ImgclusterError(f"cannot read weights {literal(path)}: {exc.strerror or exc}") from None
    if not header.lstrip().startswith(b"{"):
        raise not_weights


def check_cache_root(cache_dir: str | os.PathLike[str] | None) -> None:
    """A cache root that is a file is refused now; it failed after the model had loaded, with
    advice to pass the very option that was given."""
    given = os.fspath(cache_dir) if cache_dir else None
    root = given or expand_home(os.environ.get("IMGCLUSTER_CACHE", ""))
    if root and os.path.exists(root) and not os.path.isdir(root):
        what = "{cache_dir}" if given else "$IMGCLUSTER_CACHE"
        raise ParameterError(f"{what} {literal(root)} is a file, not a folder")


# Variables read only once the embedding starts (after torch and the model), so checked with the
# arguments: a typo in one failed after the model had loaded. Name -> (type, what its value counts).
POSITIVE_VARIABLES: dict[str, tuple[type[int] | type[float], str]] = {
    "IMGCLUSTER_FLUSH_EVERY": (int, "number of images"),
    "IMGCLUSTER_FLUSH_SECONDS": (float, "number of seconds"),
}


def positive_from_env(name: str, default: float) -> float:
    """``$name`` read as its type (:data:`POSITIVE_VARIABLES`), else ``default``; anything not above 0
    is refused, naming the variable."""
    kind, what = POSITIVE_VARIABLES[name]
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if not value > 0:
        raise ParameterError(f"{name} must be a positive {what}, not {raw!r}")
    return value


def check_environment() -> None:
    """Refuse a bad ``IMGCLUSTER_FLUSH_*``, ``IMGCLUSTER_DECODE_TIMEOUT`` or ``IMGCLUSTER_RUNTIME`` before any work."""
    from imgcluster.load import decode_timeout
    from imgcluster.onnxruntime_backend import auto_from_env

    for name in POSITIVE_VARIABLES:
        positive_from_env(name, 1)
    decode_timeout()
    auto_from_env()


def parse_clusters(value: str | int) -> int | None:
    """``"auto"`` -> None, ``"12"`` -> 12; anything else raises :class:`ParameterError` naming ``n_clusters``."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        k = int(text)
    except ValueError:
        raise ParameterError(f"{{n_clusters}} takes a whole number or 'auto', not {literal(repr(value))}") from None
    if k < 2:
        raise ParameterError(f"{{n_clusters}} must be at least 2, got {k}")
    return k


def check_clusters_fit(k: int, images: int) -> None:
    """K clusters need at least K images: said before any work (folder, store sample) and again by training itself."""
    if k > images:
        raise ParameterError(f"{{n_clusters}} {k} is larger than the number of images ({images})")


def check_k_range(k_min: int, k_max: int) -> None:
    if k_max < k_min:
        raise ParameterError(f"{{k_max}} ({k_max}) must not be below {{k_min}} ({k_min})")


def check_auto_k_fits(images: int, k_min: int, k_max: int, sampled: int | None = None) -> None:
    """``auto`` chooses K up to half the images (``sampled`` of them, when K is chosen on a sample):
    refused before any work from the scan's count, and again by :func:`imgcluster.choose_k.choose_k`."""
    check_k_range(k_min, k_max)
    if min(k_max, (images if sampled is None else sampled) // 2) < k_min:
        raise ParameterError(f"{images} images are too few to choose K between {k_min} and {k_max}; give {{n_clusters}} a number")


def check_inputs(
    folder: str | os.PathLike[str],
    model: str,
    *,
    n_clusters: int | str | None = None,
    follow_symlinks: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    head: str | os.PathLike[str] | None = None,
    k_range: tuple[int, int] | None = None,
) -> FolderListing:
    """Refuse what can be refused without features; returns the folder's listing, for the embedding.

    ``n_clusters`` (a number or ``auto``) is given when a head is to be trained on the folder:
    then one image is too few, and more clusters than images cannot work. Without it (embedding
    only, or labelling with a trained head) one image is enough. ``k_range`` is (k_min, k_max) for ``auto``.
    """
    where = check_folder(Path(folder))
    check_model_name(model)
    check_weights_file(weights)
    check_exists(head, "head", "head checkpoint")
    check_cache_root(cache_dir)
    check_environment()
    k = parse_clusters(n_clusters) if n_clusters is not None else None
    try:
        listing = list_folder(where, cache_dir, follow_symlinks)
    except KeyboardInterrupt as exc:  # a large folder takes a while: its line said finished batches were kept
        from imgcluster.signals import Interrupted

        raise Interrupted.wrap(exc, f"interrupted while scanning {literal(where)}: nothing was embedded by this run") from None
    unsupported = listing.unsupported
    found = len(listing.files)
    if found == 0:
        looked_for = " ".join(sorted(IMAGE_EXTENSIONS))
        others = ""
        if unsupported:
            kinds = " ".join(sorted({Path(rel).suffix.lower() for rel in unsupported}))
            others = f"; {len(unsupported)} file(s) in formats imgcluster cannot read ({kinds}): convert them to JPEG or PNG"
        if listing.outside:
            others += f"; {outside_links(listing.outside)}"
        raise ImgclusterError(f"no images found in {literal(where)} (looked for {looked_for}){others}")
    if n_clusters is not None and found < 2:
        raise ImgclusterError(f"need at least two images to cluster, and {literal(where)} holds one")
    if k is not None:
        check_clusters_fit(k, found)
    elif n_clusters is not None and k_range is not None:  # auto, between k_range's bounds (it embedded, then said so)
        check_auto_k_fits(found, *k_range)
    check_cache_creatable(where, cache_dir)
    return listing


def check_cache_creatable(folder: Path, cache_dir: str | os.PathLike[str] | None) -> None:
    """Refuse a cache that does not exist and cannot be created (a read-only FOLDER, a ``cache_dir`` under a folder
    this user cannot write, a file ``FOLDER/.imgcluster``): it failed the same way, but after torch and the model had
    loaded. A cache that exists is left to the run, which reads a read-only one without writing
    (:func:`imgcluster.lock.folder_lock`)."""
    from imgcluster.cache import default_cache_root
    from imgcluster.lock import CacheNotWritable

    root = default_cache_root(folder, os.fspath(cache_dir) if cache_dir else None)
    existing = next((p for p in (root, *root.parents) if os.path.lexists(p)), None)
    if existing is None or (existing == root and existing.is_dir()):
        return
    if not existing.is_dir():  # FOLDER/.imgcluster a file: "Not a directory" once the model had loaded
        why = f"{literal(existing)} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{literal(existing)} is not writable"
    else:
        return
    advice = "pass {cache_dir} DIR or set $IMGCLUSTER_CACHE to a writable folder"
    raise CacheNotWritable(f"cannot create the cache folder {root}: {why}", advice)
