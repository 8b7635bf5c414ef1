"""Why TEMI lost ACC when its prototype start moved to the shared k-means: start variants side by side.

TEMI's default start puts each head's last-layer directions at spherical k-means centres of that
head's (untrained) bottleneck embeddings of 4,096 sampled images (``temi.kmeans_prototypes``).
Until commit c507f6f that k-means was TEMI's own: one k-means++ draw per seed, exactly 10 Lloyd
iterations, an empty cluster kept its centre. Since then it is the shared ``imgcluster.kmeans``:
greedy k-means++ (``2 + ln K`` candidates per seed, the one lowering the potential most), Lloyd
until no label changes (at most 10), an empty cluster takes the worst-fitting point.

Every variant below is a drop-in ``kmeans_prototypes``; the study swaps it in for the duration of
one run (``unittest.mock.patch``) and trains through the same ``train_objective`` path as
``bench_objectives.py``. Each variant draws its randomness from a generator seeded by one draw of
the training generator, so all variants of one seed see the same sample and the same batch order:
the rows of one seed differ only by the start, and differences are paired.

The toy blobs of tests/objectives/test_temi.py: how many heads a start leaves below ACC 0.9.
Part 1 (seconds per seed idle): the start alone, before any training, on all images: ACC of each
head's initial assignment (nearest direction), the agreement between heads (NMI), the k-means
score (mean cosine to the nearest direction on the sample), the smallest initial cluster.
Part 2 (about 75 s per run on an idle 2-core CPU): the default TEMI training from each start.
Part 3: SeCu's centre seeding (the other start that moved to the shared k-means) old and new,
timed alternately. Prints markdown and writes it to ``--out`` with the load averages.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from common import HERE, datasets, features, machine, mean_std, neighbours_for, run_objective
from sklearn.metrics import normalized_mutual_info_score

from imgcluster.config import TrainConfig
from imgcluster.kmeans import kmeans_plus_plus, lloyd, spherical_kmeans
from imgcluster.neighbours import l2_normalise
from imgcluster.objectives import create_objective, temi
from imgcluster.objectives.centres import encode_with_batch_statistics
from imgcluster.scoring import hungarian_accuracy
from imgcluster.train import seed_everything

OUT = HERE / "results_temi_start.md"
ITERS = temi.KMEANS_ITERS
Start = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]  # embedded [H, S, b] -> directions [H, b, K]


def fork(generator: torch.Generator) -> torch.Generator:
    """A generator seeded by one draw of ``generator``: every variant takes the same one draw."""
    return torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))


def old_start(embedded: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """TEMI's own k-means before c507f6f, as it was: one D^2 draw per seed, 10 Lloyd steps, all heads at once."""
    x = embedded.detach().float().cpu()
    h, n, _ = x.shape
    rows = torch.arange(h)
    centres = x[rows, torch.randint(n, (h,), generator=generator)].unsqueeze(1)
    for _ in range(k - 1):
        gap = (1.0 - (x @ centres.transpose(1, 2)).amax(-1)).clamp_min(0.0) + 1e-12  # [H, N]
        pick = torch.multinomial(gap / gap.sum(-1, keepdim=True), 1, generator=generator)[:, 0]
        centres = torch.cat([centres, x[rows, pick].unsqueeze(1)], dim=1)
    for _ in range(ITERS):
        onehot = F.one_hot((x @ centres.transpose(1, 2)).argmax(-1), k).float()  # [H, N, k]
        counts = onehot.sum(1).unsqueeze(-1)
        centres = torch.where(counts > 0, F.normalize(onehot.transpose(1, 2) @ x, dim=-1), centres)
    return centres.transpose(1, 2)


def plain_seeds(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Plain k-means++ (one D^2 draw per seed) on unit rows ``x``: row indices ``[k]``."""
    chosen = [int(torch.randint(x.shape[0], (1,), generator=generator))]
    d2 = (2.0 - 2.0 * x @ x[chosen[0]]).clamp_min(0.0)
    for _ in range(1, k):
        chosen.append(int(torch.multinomial(d2.double() + 1e-12, 1, generator=generator)))
        d2 = torch.minimum(d2, (2.0 - 2.0 * x @ x[chosen[-1]]).clamp_min(0.0))
    return torch.tensor(chosen)


def plain_start(embedded: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Plain k-means++ seeds, then the shared Lloyd: isolates the seeding from the Lloyd differences."""
    return torch.stack([lloyd(z, z[plain_seeds(z, k, generator)], ITERS).T for z in embedded])


def shared_start(*, restarts: int = 1, iters: int = ITERS, centre: bool = False, seeds_only: bool = False) -> Start:
    """The shared k-means per head, with the given options (``seeds_only``: greedy seeds, no Lloyd)."""

    def start(embedded: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        fits = [spherical_kmeans(z, k, generator, restarts=restarts, iters=0 if seeds_only else iters, centre=centre) for z in embedded]
        return torch.stack([fit.best.centroids.T for fit in fits])

    return start


def centred_member_means(embedded: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means on the centred embeddings; directions = the members' mean in the raw (uncentred) space."""
    out = []
    for z in embedded:
        fit = spherical_kmeans(z, k, generator, iters=ITERS, centre=True)
        sums = torch.zeros(k, z.shape[1]).index_add_(0, fit.best.labels, z)
        out.append(F.normalize(sums, dim=-1).T)
    return torch.stack(out)


def greedy_seeds_plain_lloyd(embedded: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy seeds (the shared k-means++), Lloyd as before c507f6f (empty clusters keep their centre)."""
    out = []
    for z in embedded:
        centres = z[kmeans_plus_plus(z, k, generator)]
        for _ in range(ITERS):
            onehot = F.one_hot((z @ centres.T).argmax(-1), k).float()
            counts = onehot.sum(0).unsqueeze(-1)
            centres = torch.where(counts > 0, F.normalize(onehot.T @ z, dim=-1), centres)
        out.append(centres.T)
    return torch.stack(out)


VARIANTS: dict[str, Start] = {
    "old (before c507f6f)": old_start,
    "shared greedy, 1 run (c507f6f)": shared_start(),
    "plain k-means++ + shared Lloyd": plain_start,
    "greedy + old Lloyd": greedy_seeds_plain_lloyd,
    "greedy seeds, no Lloyd": shared_start(seeds_only=True),
    "greedy, Lloyd to convergence (50)": shared_start(iters=50),
    "shared greedy, best of 3": shared_start(restarts=3),
    "greedy on centred embeddings": shared_start(centre=True),
    "centred clusters, raw member means": centred_member_means,
}


def paired(start: Start) -> Start:
    def run(embedded: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        return start(embedded, k, fork(generator)).to(embedded)

    return run


def loads() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def start_only(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> dict[str, dict[str, float]]:
    """Every variant's start for the untrained heads that ``train_objective`` builds for ``seed``."""
    z = torch.from_numpy(l2_normalise(x))
    torch.manual_seed(seed)
    objective = create_objective("temi", z.shape[1], k, {})
    out = {}
    with torch.no_grad():
        objective.setup(z, torch.zeros(z.shape[0], 1, dtype=torch.long), torch.Generator().manual_seed(seed))
        embedded = objective.student.embed(objective._standardised(z))  # [H, N, b]: the same for every start
        for name, start in VARIANTS.items():
            with mock.patch.object(temi, "kmeans_prototypes", paired(start)):
                objective.setup(z, torch.zeros(z.shape[0], 1, dtype=torch.long), seed_everything(seed))
            cos = embedded @ F.normalize(objective.student.direction, dim=1)  # [H, N, K]
            labels = cos.argmax(-1).numpy()
            accs = [hungarian_accuracy(y, lab) for lab in labels]
            out[name] = {
                "acc": float(np.mean(accs)),
                "acc_max": float(np.max(accs)),
                "agree": float(np.mean([normalized_mutual_info_score(a, b) for a, b in itertools.combinations(labels, 2)])),
                "score": float(cos.max(-1).values.mean()),
                "smallest": float(min(np.bincount(lab, minlength=k).min() / lab.size for lab in labels)),
            }
    return out


def toy_blobs(seeds: list[int]) -> list[str]:
    """The start on tests/objectives/test_temi.py's blobs (4 blobs, 2 heads): heads whose start splits them badly."""
    sys.path.insert(0, str(HERE.parent / "tests" / "objectives"))
    from toys import blobs

    x, y = blobs(k=4, n=50, d=32)
    z = torch.from_numpy(x)
    lines = ["| start | heads below ACC 0.9 | mean ACC |", "|---|---|---|"]
    for name, start in VARIANTS.items():
        accs = []
        for seed in seeds:
            torch.manual_seed(seed)
            objective = create_objective("temi", 32, 4, {"n_heads": 2})
            with mock.patch.object(temi, "kmeans_prototypes", paired(start)), torch.no_grad():
                objective.setup(z, torch.zeros(200, 1, dtype=torch.long), torch.Generator().manual_seed(seed))
            accs += [hungarian_accuracy(y, p.numpy()) for p in objective.eval().head_probs(z).argmax(-1)]
        lines.append(f"| {name} | {sum(a < 0.9 for a in accs)} of {len(accs)} | {np.mean(accs):.3f} |")
        print(lines[-1], flush=True)
    return lines


_DATA: dict[str, object] = {}


def _init_worker(dataset: str, threads: int) -> None:
    torch.set_num_threads(threads)
    ds = next(d for d in datasets() if d.name == dataset)
    x, y, _, _ = features(ds.folder, torch.device("cpu"))
    _DATA.update(x=x, y=y, k=ds.classes, nn=neighbours_for(x))


def _train(task: tuple[int, str]) -> tuple[int, str, dict[str, float], str]:
    seed, name = task
    x, y, k, nn = _DATA["x"], _DATA["y"], _DATA["k"], _DATA["nn"]
    with mock.patch.object(temi, "kmeans_prototypes", paired(VARIANTS[name])):
        r = run_objective(x, y, nn, TrainConfig(objective="temi", clusters=k, seed=seed), torch.device("cpu"))  # type: ignore[arg-type]
    return seed, name, r, loads()


def old_centre_seeds(z: torch.Tensor, k: int, generator: torch.Generator, max_points: int = 20_000) -> torch.Tensor:
    """The centre objectives' greedy k-means++ seeding before c507f6f, as it was: unit centres ``[d, k]``."""
    n = z.shape[0]
    if n > max_points:
        z = z[torch.randperm(n, generator=generator)[:max_points].to(z.device)]
        n = max_points
    trials = 2 + int(math.log(k))
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    d2 = (2.0 - 2.0 * z @ z[chosen[0]]).clamp_min(0.0)
    for _ in range(1, k):
        weights = d2.double().cpu()
        if float(weights.sum()) <= 0:
            chosen.append(int(torch.randint(n, (1,), generator=generator)))
            continue
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator).to(z.device)
        new_d2 = torch.minimum(d2.unsqueeze(0), (2.0 - 2.0 * z[candidates] @ z.T).clamp_min(0.0))
        best = int(new_d2.sum(1).argmin())
        chosen.append(int(candidates[best]))
        d2 = new_d2[best]
    return z[chosen].T.contiguous()


def secu_seeding(x: np.ndarray, k: int, reps: int) -> list[str]:
    """SeCu's centre seeding before and after the move to the shared k-means, timed alternately in one process."""
    z_in = torch.from_numpy(l2_normalise(x))
    torch.manual_seed(0)
    objective = create_objective("secu", z_in.shape[1], k, {})
    new_times, old_times, same = [], [], True
    for rep in range(reps):
        t0 = time.perf_counter()
        objective.seed_centres(z_in, torch.Generator().manual_seed(rep))
        new_times.append(time.perf_counter() - t0)
        new = objective.centres.detach().clone()
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(rep)
        z_old = encode_with_batch_statistics(objective.encoder, z_in)
        old = torch.stack([old_centre_seeds(z_old, k, g) for _ in range(objective.n_heads)])
        old_times.append(time.perf_counter() - t0)
        same = same and torch.allclose(new, old, atol=1e-6)
    return [
        f"SeCu's centre seeding ({objective.n_heads} heads, {x.shape[0]} images, encoder and seeds) timed alternately, "
        f"{reps} times each, in one process: before c507f6f (its own greedy k-means++) median "
        f"{1000 * float(np.median(old_times)):.0f} ms, the shared k-means (`iters=0`) median "
        f"{1000 * float(np.median(new_times)):.0f} ms; same centres from the same generator state: {'yes' if same else 'no'}. "
        f"Load average: {loads()}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="fashion-mnist-test")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(range(5)))
    parser.add_argument("--start-seeds", nargs="*", type=int, default=list(range(10)), help="seeds of part 1")
    parser.add_argument("--train", nargs="*", default=None, help="variants trained in part 2 (default: all; none: skip)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once (each with threads/jobs torch threads)")
    parser.add_argument("--toy-seeds", nargs="*", type=int, default=list(range(30)), help="seeds of the toy blobs (none: skip)")
    parser.add_argument("--secu-reps", type=int, default=5, help="timings of SeCu's centre seeding, old and new (0: skip)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    ds = next(d for d in datasets() if d.name == args.dataset)
    x, y, _, _ = features(ds.folder, torch.device("cpu"))
    threads = max(1, torch.get_num_threads() // args.jobs)
    lines = [
        "# TEMI's prototype start, variants side by side",
        "",
        f"Run as `python benchmarks/bench_temi_start.py {' '.join(sys.argv[1:])}` (see its docstring for the variants). "
        "Each variant draws from a generator seeded by one draw of the training generator, so the runs of one seed "
        "share the sample and the batch order and differ only by the start. The 2-core CPU was shared with other "
        "jobs: load averages (1/5/15 min) are given with the numbers; ACC does not depend on the load, times do.",
    ]
    print(f"machine: {machine()}, load {loads()}", flush=True)
    if args.toy_seeds:
        seeds = f"seeds {args.toy_seeds[0]}-{args.toy_seeds[-1]}"
        lines += ["", f"## The start on the toy blobs of tests/objectives/test_temi.py ({seeds})", ""]
        lines += [*toy_blobs(args.toy_seeds), "", f"Load average after the toy blobs: {loads()}."]
    if args.start_seeds:
        lines += [
            "",
            f"## The start alone on {ds.name} ({x.shape[0]} images; untrained heads, seeds {', '.join(map(str, args.start_seeds))})",
            "",
            "`init ACC`: ACC of each head's nearest-direction assignment on all images, mean over the 4 heads; "
            "`best head`: the best head's; `head agreement`: NMI between heads' initial partitions; "
            "`k-means score`: mean cosine to the nearest direction; `smallest`: the smallest initial cluster's share. "
            "Mean ± std over seeds.",
            "",
            "| start | init ACC | best head | head agreement | k-means score | smallest |",
            "|---|---|---|---|---|---|",
        ]
        per_seed = [start_only(x, y, ds.classes, seed) for seed in args.start_seeds]
        for name in VARIANTS:
            rows = [p[name] for p in per_seed]
            lines.append(
                f"| {name} | {mean_std([r['acc'] for r in rows])} | {mean_std([r['acc_max'] for r in rows])} | "
                f"{mean_std([r['agree'] for r in rows])} | {mean_std([r['score'] for r in rows], 4)} | "
                f"{mean_std([r['smallest'] for r in rows])} |"
            )
            print(lines[-1], flush=True)
        lines += ["", f"Load average after part 1: {loads()}."]
    trained = list(VARIANTS) if args.train is None else args.train
    if trained:
        tasks = [(seed, name) for seed in args.seeds for name in trained]
        runs: dict[tuple[int, str], tuple[dict[str, float], str]] = {}
        with mp.get_context("spawn").Pool(args.jobs, _init_worker, (ds.name, threads)) as pool:
            for seed, name, r, load in pool.imap_unordered(_train, tasks):
                runs[(seed, name)] = (r, load)
                print(f"seed {seed} {name}: ACC {r['acc']:.3f} NMI {r['nmi']:.3f} {r['seconds']:.0f} s load {load}", flush=True)
        lines += ["", f"## Trained on {ds.name} (default TEMI options), seeds {', '.join(map(str, args.seeds))}", ""]
        lines += [
            f"{args.jobs} run(s) at once, {threads} torch thread(s) each. Per run: ACC (train s, load average when it finished).",
            "",
            f"| seed | {' | '.join(trained)} |",
            f"|---|{'---|' * len(trained)}",
        ]
        for seed in args.seeds:
            cells = [f"{runs[(seed, n)][0]['acc']:.3f} ({runs[(seed, n)][0]['seconds']:.0f} s, {runs[(seed, n)][1]})" for n in trained]
            lines.append(f"| {seed} | {' | '.join(cells)} |")
        lines += ["", "| start | ACC | NMI | ARI | train s |", "|---|---|---|---|---|"]
        for name in trained:
            rs = [runs[(seed, name)][0] for seed in args.seeds]
            lines.append(
                f"| {name} | {mean_std([r['acc'] for r in rs])} | {mean_std([r['nmi'] for r in rs])} | "
                f"{mean_std([r['ari'] for r in rs])} | {mean_std([r['seconds'] for r in rs], 1)} |"
            )
    if args.secu_reps:
        lines += ["", "## SeCu's seeding: the other objective whose start moved", "", *secu_seeding(x, ds.classes, args.secu_reps)]
        print(lines[-1], flush=True)
    lines += ["", f"_Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}._", ""]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
