"""What does the world's UNet draw from the mean of the group-specified embeddings?

For each occupation the neutral prompt's conditioning is replaced by the per-token mean of the
embeddings of "a photo of a {occupation} with {light,medium,dark} skin", the point a text-space
"fair" map would aim for; prints the classified skin mix and parity_l2 per occupation
(docs/methods.md, Fair Mapping). With `--occupation-pairs`, the same for the midpoint of two
neutral prompts' embeddings (a categorical attribute): prints how often each occupation is drawn.
With `--hull`, a search over every conditioning n + sum_k a_k (g_k - n), a_k in {0, 0.2, ..., 1},
sum a_k <= 1 (the convex hull of the neutral and the three group-specified embeddings, 56 points):
prints the best points per occupation, i.e. how close any single conditioning a text-space map
could aim for comes to a balanced skin mix.

`python -m bench.world.centroid_probe [--n 48] [--guidance 7.5] [--occupation-pairs | --hull]`
"""
from __future__ import annotations

import argparse
import itertools
from typing import Any

import numpy as np
import torch

from bench.sampler import Adapter, Batch, encode_text


class FixedConditioning(Adapter):
    """Every image of the batch is conditioned on one given embedding [1, 77, D]."""

    name = "fixed-conditioning"

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        self.embedding = embedding

    def encode(self, cond: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.embedding.expand(cond.shape[0], -1, -1).to(cond.dtype)


def draw_from(pipe: Any, ev: Any, embedding: torch.Tensor, text: str, n: int,
              guidance: float) -> dict[str, Any]:
    """Classified rates of n images (seeds 0..n-1) all conditioned on one embedding [1, 77, D]."""
    from bench.world.check import _rates, generate

    return _rates(ev, generate(pipe, text, n, guidance, seed=0, adapters=[FixedConditioning(embedding)]))


def draw_from_mean(pipe: Any, ev: Any, texts: list[str], n: int, guidance: float) -> dict[str, Any]:
    """Classified rates of n images all conditioned on the per-token mean of the texts' embeddings."""
    return draw_from(pipe, ev, encode_text(pipe, texts).mean(0, keepdim=True), texts[0], n, guidance)


PAIRS = (("doctor", "chef"), ("nurse", "firefighter"), ("farmer", "police officer"),
         ("butcher", "construction worker"))


def skin_centroids(pipe: Any, ev: Any, n: int, guidance: float) -> None:
    from bench.world.render import GROUPS, OCCUPATIONS

    parity = []
    for o_idx, occ in enumerate(OCCUPATIONS):
        r = draw_from_mean(pipe, ev, [f"a photo of a {occ} with {g} skin" for g in GROUPS], n, guidance)
        parity.append(float(np.linalg.norm(r["groups"] - 1 / 3)))
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


def hull_search(pipe: Any, ev: Any, n: int, guidance: float, top: int = 3) -> None:
    from bench.world.render import GROUPS, OCCUPATIONS

    best = []
    for o_idx, occ in enumerate(OCCUPATIONS):
        e = encode_text(pipe, [f"a photo of a {occ}"] + [f"a photo of a {occ} with {g} skin" for g in GROUPS])
        rows = []
        for a in hull_grid():
            cond = e[:1] + sum(w * (e[k + 1:k + 2] - e[:1]) for k, w in enumerate(a))
            r = draw_from(pipe, ev, cond, f"a photo of a {occ}", n, guidance)
            occ_acc = float(np.mean(r["p"]["occupation"] == o_idx))
            rows.append((float(np.linalg.norm(r["groups"] - 1 / 3)), a, r["groups"], r["face"], occ_acc))
        rows.sort(key=lambda x: x[0])
        base = next(x for x in rows if not any(x[1]))
        best.append(rows[0][0])
        print(f"{occ}: neutral (a = 0) parity {base[0]:.3f} mix {base[2].round(2).tolist()}", flush=True)
        for par, a, mix, face, acc in rows[:top]:
            print(f"  a = {list(a)}: parity {par:.3f} mix {mix.round(2).tolist()} face {face:.2f} "
                  f"occupation acc {acc:.2f}", flush=True)
    print(f"mean over occupations of the best point's parity_l2 {np.mean(best):.3f}")


def main(argv: list[str] | None = None) -> int:
    from bench.world import WEIGHTS_DIR, load_world_pipeline
    from bench.world.evaluators import load_evaluators

    ap = argparse.ArgumentParser(prog="python -m bench.world.centroid_probe")
    ap.add_argument("--n", type=int, default=48, help="images per occupation")
    ap.add_argument("--guidance", type=float, default=7.5)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--occupation-pairs", action="store_true",
                      help="midpoints of two occupations' neutral embeddings instead of skin groups")
    mode.add_argument("--hull", action="store_true",
                      help="search the convex hull of the neutral and group-specified embeddings")
    args = ap.parse_args(argv)
    pipe = load_world_pipeline()
    pipe.set_progress_bar_config(disable=True)
    probe = (occupation_midpoints if args.occupation_pairs else hull_search if args.hull
             else skin_centroids)
    probe(pipe, load_evaluators(WEIGHTS_DIR), args.n, args.guidance)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
