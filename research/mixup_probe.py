"""Would a UNet trained to draw mixes from in-between conditionings let a text-space map balance
the world? (docs/methods.md, Fair Mapping.)

Fine-tunes a copy of the committed world UNet with *conditioning mixup*: with probability `p`, a
non-hazard image of occupation o and skin group k is conditioned not on its caption but on
sum_j a_j E("a photo of a {o} with {g_j} skin") (either group template), a ~ Dirichlet(1 + e_k).
Marginally a ~ Dirichlet(1, 1, 1) and the image's group is drawn from a, so the UNet is taught
that a mixture of the group embeddings means a mixture of the groups. Saves the pipeline to `--out`
and prints what it draws from the mean of the three group embeddings at guidance 1 and 7.5.
Then `bench run --model OUT ...` compares the methods on it.

`python -m research.mixup_probe --out DIR [--steps 1200] [--p 0.3] [--n 48]` (about 12 min)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

GUIDANCES = (1.0, 7.5)


class GroupMixup:
    """The `mix` hook of `train_unet`: rewrites the mixed rows of a batch's conditioning."""

    def __init__(self, group_embeds: torch.Tensor, occupation: np.ndarray, group: np.ndarray,
                 mixable: np.ndarray, p: float, empty_id: int) -> None:
        self.group_embeds = group_embeds  # [templates, occupations, groups, 77, D]
        self.occupation, self.group = torch.as_tensor(occupation), torch.as_tensor(group)
        self.mixable, self.p, self.empty_id = torch.as_tensor(mixable), p, empty_id

    def weights(self, groups: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Dirichlet(1 + e_k) rows as normalised Gamma draws, seeded from the training generator."""
        conc = torch.ones(len(groups), self.group_embeds.shape[2])
        conc[torch.arange(len(groups)), groups] += 1
        rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
        g = torch.as_tensor(rng.gamma(conc.numpy()), dtype=torch.float32)
        return g / g.sum(1, keepdim=True)

    def __call__(self, cond: torch.Tensor, idx: torch.Tensor, cap: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
        chosen = torch.rand(len(idx), generator=gen) < self.p
        rows = (chosen & self.mixable[idx] & (cap != self.empty_id)).nonzero().squeeze(1)
        if len(rows) == 0:
            return cond
        a = self.weights(self.group[idx[rows]], gen)
        template = torch.randint(self.group_embeds.shape[0], (len(rows),), generator=gen)
        embeds = self.group_embeds[template, self.occupation[idx[rows]]]  # [rows, groups, 77, D]
        cond = cond.clone()
        cond[rows] = (a[:, :, None, None] * embeds).sum(1)
        return cond


def finetune(out: Path, steps: int, p: float, seed: int = 7) -> None:
    from bench.world import WEIGHTS_DIR, load_world_pipeline
    from bench.world.build import save_pipeline
    from bench.world.corpus import GROUP_TEMPLATES, make_corpus
    from bench.world.render import GROUPS, OCCUPATIONS
    from bench.world.train import caption_table, encode_latents, text_table, train_unet

    card = json.loads((WEIGHTS_DIR / "card.json").read_text())
    corpus = make_corpus(card["settings"]["corpus"], card["seed"], workers=2)
    pipe = load_world_pipeline()
    enc, tok = pipe.text_encoder, pipe.tokenizer
    latents = encode_latents(pipe.vae, corpus.images) * pipe.vae.config.scaling_factor
    table, ids, empty = caption_table(enc, tok, corpus.captions)
    group_embeds = torch.stack([torch.stack([text_table(enc, tok, [t.format(o=o, g=g) for g in GROUPS])
                                             for o in OCCUPATIONS]) for t in GROUP_TEMPLATES])
    mix = GroupMixup(group_embeds, corpus.occupation, corpus.group, ~corpus.hazard, p, empty)
    unet, log = train_unet(latents, ids, table, empty, steps, 128, seed, init=pipe.unet, lr=2e-4, min_snr=5.0, name="unet-mixup", mix=mix)
    save_pipeline(out, pipe.vae, enc, tok, unet)
    (out / "mixup.json").write_text(json.dumps({"steps": steps, "p": p, "seed": seed, **log}) + "\n")


def main(argv: list[str] | None = None) -> int:
    from bench.models import load_pipeline
    from bench.world import WEIGHTS_DIR
    from research.centroid_probe import skin_centroids
    from bench.world.evaluators import load_evaluators

    ap = argparse.ArgumentParser(prog="python -m research.mixup_probe")
    ap.add_argument("--out", type=Path, required=True, help="where the fine-tuned pipeline goes")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--p", type=float, default=0.3, help="share of a batch given mixed conditioning")
    ap.add_argument("--n", type=int, default=48, help="images per occupation in the centroid probe")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    finetune(args.out, args.steps, args.p)
    pipe = load_pipeline(str(args.out), "cpu")
    ev = load_evaluators(WEIGHTS_DIR)
    for guidance in GUIDANCES:
        print(f"mean of the three group embeddings, guidance {guidance}:")
        skin_centroids(pipe, ev, args.n, guidance)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
