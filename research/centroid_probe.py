"""What does the world's UNet draw from the mean of the group-specified embeddings?

For each occupation the neutral prompt's conditioning is replaced by the per-token mean of the
embeddings of "a photo of a {occupation} with {light,medium,dark} skin", the point a text-space
"fair" map would aim for; prints the classified skin mix and parity_l2 per occupation
(docs/methods.md, Fair Mapping). With `--occupation-pairs`, the same for the midpoint of two
neutral prompts' embeddings (a categorical attribute): prints how often each occupation is drawn.
With `--hull`, a search over every conditioning n + sum_k a_k (g_k - n), a_k in {0, 0.2, ..., 1},
sum a_k <= 1 (the convex hull of the neutral and the three group-specified embeddings, 56 points):
prints the best points per occupation, i.e. how close any single conditioning a text-space map
could aim for comes to a balanced skin mix, and how many points draw every group at least 15% of
the time; `--verify N` redraws each occupation's best point and its neutral point with N fresh
seeds (the search's pick favours its own lucky draws).

`python -m research.centroid_probe [--n 48] [--guidance 7.5] [--occupation-pairs | --hull [--verify N]]
[--unguided-steps K] [--pipeline DIR]`
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.adapter import Adapter, Batch, Step
from bench.sampler import encode_text
from bench.metrics.stats import parity_l2, percentile_interval


class FixedConditioning(Adapter):
    """Every image of the batch is conditioned on one given embedding [1, 77, D]."""

    name = "fixed-conditioning"

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        self.embedding = embedding

    def encode(self, cond: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.embedding.expand(cond.shape[0], -1, -1).to(cond.dtype)


class UnguidedSteps(Adapter):
    """Guidance off (the conditional prediction alone) for the first `k` of the sampler's steps:
    the guided prediction eps_u + s (eps_c - eps_u) gets -(s - 1) (eps_c - eps_u) added."""

    name = "unguided-steps"

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def guide(self, eps_u: torch.Tensor, eps_c: torch.Tensor, extras: Any, step: Step,
              state: Any) -> torch.Tensor | None:
        return None if step.i >= self.k else -(step.guidance - 1) * (eps_c - eps_u)


def draw_from(pipe: Any, ev: Any, embedding: torch.Tensor, text: str, n: int,
              guidance: float, seed: int = 0, unguided: int = 0) -> dict[str, Any]:
    """Classified rates of n images (seeds seed..seed+n-1) all conditioned on one embedding
    [1, 77, D]; guidance starts after `unguided` steps."""
    from bench.world.check import _rates, generate

    adapters = [FixedConditioning(embedding)] + ([UnguidedSteps(unguided)] if unguided else [])
    return _rates(ev, generate(pipe, text, n, guidance, seed=seed, adapters=adapters))


def draw_from_mean(pipe: Any, ev: Any, texts: list[str], n: int, guidance: float,
                   unguided: int = 0) -> dict[str, Any]:
    """Classified rates of n images all conditioned on the per-token mean of the texts' embeddings."""
    return draw_from(pipe, ev, encode_text(pipe, texts).mean(0, keepdim=True), texts[0], n,
                     guidance, unguided=unguided)


PAIRS = (("doctor", "chef"), ("nurse", "firefighter"), ("farmer", "police officer"),
         ("butcher", "construction worker"))


def skin_centroids(pipe: Any, ev: Any, n: int, guidance: float, unguided: int = 0) -> None:
    from bench.world.render import GROUPS, OCCUPATIONS

    parity = []
    for o_idx, occ in enumerate(OCCUPATIONS):
        r = draw_from_mean(pipe, ev, [f"a photo of a {occ} with {g} skin" for g in GROUPS], n,
                           guidance, unguided)
        parity.append(float(parity_l2(r["groups"])))
        print(f"{occ:20s} light/medium/dark {r['groups'].round(2).tolist()}  face {r['face']:.2f}  "
              f"occupation acc {np.mean(r['p']['occupation'] == o_idx):.2f}", flush=True)
    print(f"mean parity_l2 {np.mean(parity):.3f}")


def occupation_midpoints(pipe: Any, ev: Any, n: int, guidance: float) -> None:
    from bench.world.render import OCCUPATIONS

    for a, b in PAIRS:
        r = draw_from_mean(pipe, ev, [f"a photo of a {a}", f"a photo of a {b}"], n, guidance)
        share = np.bincount(r["p"]["occupation"], minlength=len(OCCUPATIONS)) / n
        print(f"{a} + {b}: {a} {share[OCCUPATIONS.index(a)]:.2f}, {b} {share[OCCUPATIONS.index(b)]:.2f}, "
              f"face {r['face']:.2f}", flush=True)


def hull_grid(step: float = 0.2) -> list[tuple[float, ...]]:
    """Weights (a_light, a_medium, a_dark) on a grid with a_k >= 0 and sum <= 1."""
    ticks = [round(i * step, 6) for i in range(round(1 / step) + 1)]
    return [a for a in itertools.product(ticks, repeat=3) if sum(a) <= 1 + 1e-9]


def hull_point(e: torch.Tensor, a: tuple[float, ...]) -> torch.Tensor:
    """n + sum_k a_k (g_k - n) for e = [n, g_1, g_2, ...] stacked embeddings."""
    return e[:1] + sum(w * (e[k + 1:k + 2] - e[:1]) for k, w in enumerate(a))


def hull_search(pipe: Any, ev: Any, n: int, guidance: float, top: int = 3,
                verify: int = 0) -> None:
    from bench.world.render import GROUPS, OCCUPATIONS

    best, picks, balanced, total = [], [], 0, 0
    for o_idx, occ in enumerate(OCCUPATIONS):
        e = encode_text(pipe, [f"a photo of a {occ}"] + [f"a photo of a {occ} with {g} skin" for g in GROUPS])
        rows = []
        for a in hull_grid():
            r = draw_from(pipe, ev, hull_point(e, a), f"a photo of a {occ}", n, guidance)
            occ_acc = float(np.mean(r["p"]["occupation"] == o_idx))
            rows.append((float(parity_l2(r["groups"])), a, r["groups"], r["face"], occ_acc))
        rows.sort(key=lambda x: x[0])
        base = next(x for x in rows if not any(x[1]))
        best.append(rows[0][0])
        picks.append((occ, e, rows[0][1]))
        balanced += sum(min(x[2]) >= BALANCED for x in rows)
        total += len(rows)
        print(f"{occ}: neutral (a = 0) parity {base[0]:.3f} mix {base[2].round(2).tolist()}", flush=True)
        for par, a, mix, face, acc in rows[:top]:
            print(f"  a = {list(a)}: parity {par:.3f} mix {mix.round(2).tolist()} face {face:.2f} "
                  f"occupation acc {acc:.2f}", flush=True)
    print(f"points drawing every group at least {BALANCED:.0%} of the time: {balanced} of {total}")
    print(f"mean over occupations of the best point's parity_l2 {np.mean(best):.3f}")
    if verify:
        verify_picks(pipe, ev, picks, verify, guidance)


BALANCED = 0.15  # share of every group that counts a hull point as drawing a mix
VERIFY_SEED = 5000  # fresh seeds: the search's best points favour its own lucky draws


def verify_picks(pipe: Any, ev: Any, picks: list[tuple[str, torch.Tensor, tuple[float, ...]]],
                 n: int, guidance: float) -> None:
    """Redraw each occupation's best hull point and its neutral point with n fresh seeds; the
    means get 95% percentile intervals resampling occupations (2,000 draws, seed 0)."""
    parity: dict[str, list[float]] = {"best points": [], "neutral points": []}
    for occ, e, a in picks:
        for key, w in (("best points", a), ("neutral points", (0.0,) * len(a))):
            r = draw_from(pipe, ev, hull_point(e, w), f"a photo of a {occ}", n, guidance,
                          seed=VERIFY_SEED)
            parity[key].append(float(parity_l2(r["groups"])))
    rng = np.random.default_rng(0)
    for key, values in parity.items():
        x = np.array(values)
        lo, hi = percentile_interval([x[rng.integers(0, len(x), len(x))].mean() for _ in range(2000)])
        print(f"fresh seeds ({n} from {VERIFY_SEED}), {key}: mean parity_l2 {x.mean():.3f} "
              f"[{lo:.2f}, {hi:.2f}]")


def main(argv: list[str] | None = None) -> int:
    from bench.models import load_pipeline
    from bench.world import WEIGHTS_DIR, load_world_pipeline
    from bench.world.evaluators import load_evaluators

    ap = argparse.ArgumentParser(prog="python -m research.centroid_probe")
    ap.add_argument("--n", type=int, default=48, help="images per occupation")
    ap.add_argument("--guidance", type=float, default=7.5)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--occupation-pairs", action="store_true",
                      help="midpoints of two occupations' neutral embeddings instead of skin groups")
    mode.add_argument("--hull", action="store_true",
                      help="search the convex hull of the neutral and group-specified embeddings")
    ap.add_argument("--verify", type=int, default=0, metavar="N",
                    help="with --hull: redraw the best and the neutral points with N fresh seeds")
    ap.add_argument("--unguided-steps", type=int, default=0, metavar="K",
                    help="centroids only: guidance off for the first K of the 25 steps")
    ap.add_argument("--pipeline", type=Path, default=None, metavar="DIR",
                    help="another world pipeline directory (e.g. research.mixup_probe's --out)")
    args = ap.parse_args(argv)
    pipe = load_world_pipeline() if args.pipeline is None else load_pipeline(str(args.pipeline), "cpu")
    pipe.set_progress_bar_config(disable=True)
    ev = load_evaluators(WEIGHTS_DIR)
    if args.hull:
        hull_search(pipe, ev, args.n, args.guidance, verify=args.verify)
    elif args.occupation_pairs:
        occupation_midpoints(pipe, ev, args.n, args.guidance)
    else:
        skin_centroids(pipe, ev, args.n, args.guidance, args.unguided_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
