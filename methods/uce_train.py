"""`bench train uce`: edit the cross-attention key/value projections in closed form (UCE) and write
the edit as a checkpoint (`delta.safetensors` + `card.json`).

  --mode erase   edited concepts answer like their guide concept ("" = the empty prompt, the
                 official default for objects); preserved concepts keep their outputs.
  --mode debias  each occupation's output moves toward a mix of its groups' outputs; the mix
                 weights alpha are adjusted, as the official debias script does, by the gap between
                 the desired and the generated group shares until every gap is within --max-diff
                 or --iterations is reached.
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bench.methods.checkpoints import (add_dtype, architecture, check_finite, nonnegative_float,
                                       positive_int)
from bench.methods.uce import DELTA, closed_form, concept_embeddings, projections

Targets = Callable[[torch.Tensor], torch.Tensor]  # W_old [out, in] -> v* [n, out]


def solve(pipe: Any, edit: torch.Tensor, targets: Targets, preserve: torch.Tensor, lam: float,
          edit_scale: float, preserve_scale: float) -> dict[str, torch.Tensor]:
    """`<module>.weight` -> W - W_old (float32) for every cross-attention key/value projection."""
    out = {}
    for name, module in projections(pipe.unet).items():
        w_old = module.weight.detach().double()
        w = closed_form(w_old, edit, targets(w_old), preserve, lam, edit_scale, preserve_scale)
        check_finite("uce", float((w - w_old).abs().sum()), f"the edit of {name} (|delta| sum)",
                     "train with --dtype float32 (are the text embeddings finite?)")
        out[f"{name}.weight"] = (w - w_old).float().cpu().contiguous()
    return out


def erase_edit(pipe: Any, concepts: list[str], guides: list[str], preserve: list[str], lam: float,
               edit_scale: float = 1.0, preserve_scale: float = 1.0) -> dict[str, torch.Tensor]:
    c = concept_embeddings(pipe, concepts)
    g = concept_embeddings(pipe, guides)
    p = concept_embeddings(pipe, preserve) if preserve else c[:0]
    return solve(pipe, c, lambda w: g @ w.T, p, lam, edit_scale, preserve_scale)


def debias_edit(pipe: Any, concepts: list[str], groups: list[list[str]], alpha: np.ndarray,
                preserve: list[str], lam: float, edit_scale: float = 1.0,
                preserve_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """v_i* = W_old c_i + sum_k alpha_ik W_old c_ik (concepts [n], groups [n][K], alpha [n, K])."""
    c = concept_embeddings(pipe, concepts)
    n, k = len(concepts), len(groups[0])
    cg = concept_embeddings(pipe, [t for row in groups for t in row]).reshape(n, k, -1)
    a = torch.as_tensor(alpha, dtype=torch.float64, device=c.device)
    p = concept_embeddings(pipe, preserve) if preserve else c[:0]
    return solve(pipe, c, lambda w: c @ w.T + torch.einsum("nk,nkd->nd", a, cg @ w.T), p, lam,
                 edit_scale, preserve_scale)


def write(out: Path, deltas: dict[str, torch.Tensor], card: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(deltas, str(out / DELTA))
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")


def generated_shares(pipe: Any, deltas: dict[str, torch.Tensor], prompts: list[str],
                     groups: Sequence[str], classify: Callable, images: int, steps: int,
                     guidance: float, seed: int) -> np.ndarray:
    """[n_prompts, K]: the share of each group among `images` images of each prompt, generated
    with the deltas applied (through the adapter, so they are undone afterwards)."""
    from bench.sampler import Batch, sample
    from bench.methods.uce import UCE

    adapter = UCE()
    adapter._deltas = lambda _pipe: [(m.weight, deltas[f"{n}.weight"])  # type: ignore[method-assign]
                                     for n, m in projections(pipe.unet).items()]
    adapter.prepare(pipe)
    try:
        shares = []
        for i, prompt in enumerate(prompts):
            seeds = [seed + 1000 * i + j for j in range(images)]
            imgs = sample(pipe, [], Batch([prompt] * images, seeds, guidance=guidance),
                          steps=steps, height=_size(pipe), width=_size(pipe)).images
            labels = list(classify(imgs))
            shares.append([labels.count(g) / images for g in groups])
        return np.array(shares)
    finally:
        adapter.release(pipe)


def _size(pipe: Any) -> int:
    from bench.models import native_size

    return native_size(pipe)


def debias(pipe: Any, occupations: list[str], attribute: str, classify: Callable, *,
           iterations: int, images: int, steps: int, guidance: float, max_diff: float,
           lam: float, seed: int, preserve: list[str],
           step_size: float = 1.0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from bench.methods.fair_mapping import get_spec
    from bench.prompt_sets.occupations import with_article

    spec = get_spec(attribute)
    tpl = spec.templates[0]
    concepts = [tpl.format(noun=with_article(spec.noun(o, None))) for o in occupations]
    groups = [[tpl.format(noun=with_article(spec.noun(o, g))) for g in range(len(spec.groups))]
              for o in occupations]
    desired = np.full(len(spec.groups), 1 / len(spec.groups))
    alpha = np.zeros((len(concepts), len(spec.groups)))
    deltas = debias_edit(pipe, concepts, groups, alpha, preserve, lam)
    history = []
    for it in range(iterations):
        shares = generated_shares(pipe, deltas, concepts, spec.groups, classify, images, steps,
                                  guidance, seed)
        gap = desired[None, :] - shares
        gap[np.abs(gap).max(1) < max_diff] = 0.0  # balanced occupations keep their alpha
        history.append({"iteration": it, "shares": shares.round(4).tolist(),
                        "max_gap": float(np.abs(desired - shares).max())})
        print(f"uce debias iteration {it}: max gap {history[-1]['max_gap']:.3f}")
        if not gap.any():
            break
        alpha = alpha + step_size * gap  # the official script accumulates the whole gap (its
        # --step_size is parsed but unused): step_size 1 is its behaviour
        deltas = debias_edit(pipe, concepts, groups, alpha, preserve, lam)
    info = {"concepts": concepts, "group_concepts": groups, "groups": list(spec.groups),
            "alpha": alpha.round(6).tolist(), "history": history, "images_per_prompt": images,
            "sample_steps": steps, "guidance": guidance, "max_diff": max_diff,
            "step_size": step_size}
    return deltas, info


def split(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(";")] if text else []


def expand(concepts: list[str]) -> list[str]:
    """The official --expand_prompts for objects: the concept alone and in five phrasings."""
    return [p for c in concepts for p in (c, f"image of {c}", f"photo of {c}", f"portrait of {c}",
                                           f"picture of {c}", f"painting of {c}")]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench train uce", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["erase", "debias"], required=True)
    ap.add_argument("--model", required=True, help="model name, alias, hub id or diffusers dir")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    ap.add_argument("--concepts", help="erase: concept texts separated by ';'")
    ap.add_argument("--guide", default="", help="erase: guide concept(s) ';'-separated, one or one "
                    "per concept (default: the empty prompt)")
    ap.add_argument("--expand", action="store_true", help="erase: add the official five phrasings "
                    "(image of X, photo of X, ...) of each concept and guide")
    ap.add_argument("--preserve", help="concept texts to keep, ';'-separated")
    ap.add_argument("--lam", type=nonnegative_float, default=0.5, help="regulariser (official 0.5)")
    ap.add_argument("--edit-scale", type=nonnegative_float, default=1.0)
    ap.add_argument("--preserve-scale", type=nonnegative_float, default=1.0)
    ap.add_argument("--attribute", choices=["race", "gender", "skin"], help="debias: the groups")
    ap.add_argument("--occupations", type=Path, help="debias: file, one occupation a line")
    ap.add_argument("--classifier", help="debias: module:callable, images (B,H,W,3 in [0,1]) -> "
                    "group labels (required; docs/methods.md names one)")
    ap.add_argument("--iterations", type=positive_int, default=30, help="debias: at most (official 30)")
    ap.add_argument("--images", type=positive_int, default=10, help="debias: images per occupation "
                    "and iteration (official 10)")
    ap.add_argument("--sample-steps", type=positive_int, default=20, help="debias (official 20)")
    ap.add_argument("--guidance", type=nonnegative_float, default=7.5)
    ap.add_argument("--step-size", type=nonnegative_float, default=1.0, help="debias: fraction of "
                    "the share gap added to alpha per iteration (1 = the official code)")
    ap.add_argument("--max-diff", type=nonnegative_float, default=0.05, help="debias (official 0.05)")
    ap.add_argument("--name", default="", help="the card's attribute, naming a shipped "
                    "uce-<name>/ checkpoint (default: hazard-free concept label or the attribute)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    add_dtype(ap, "the edit is solved in float64 from the weights and embeddings in it and "
              "written as float32")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from bench.models import dtype_name, fingerprint, load_pipeline
    from bench.spec import SpecError

    ap = parser()
    a = ap.parse_args(argv)
    if a.lam <= 0:
        ap.error("--lam must be > 0 (the regulariser makes the system invertible)")
    start = time.perf_counter()
    pipe = load_pipeline(a.model, a.device, a.dtype)
    preserve = split(a.preserve)
    card: dict[str, Any] = {"method": "uce", "mode": a.mode, "model": a.model,
                            "model_fingerprint": fingerprint(pipe),
                            "architecture": architecture(pipe), "lam": a.lam,
                            "edit_scale": a.edit_scale, "preserve_scale": a.preserve_scale,
                            "preserve": preserve, "token": "last word token of each concept text",
                            "projections": sorted(projections(pipe.unet)), "seed": a.seed,
                            "dtype": dtype_name(pipe)}
    if a.mode == "erase":
        concepts, guides = split(a.concepts), split(a.guide) or [""]
        if not concepts:
            ap.error("--mode erase needs --concepts 'a;b'")
        if len(guides) == 1:
            guides = guides * len(concepts)
        if len(guides) != len(concepts):
            ap.error(f"--guide: {len(guides)} guides for {len(concepts)} concepts; give one or one each")
        if a.expand:
            # as the official script: an empty guide also gets the phrasings ("photo of ")
            guides = [x.strip() for g in guides for x in expand([g])]
            concepts = expand(concepts)
        deltas = erase_edit(pipe, concepts, guides, preserve, a.lam, a.edit_scale, a.preserve_scale)
        card.update(attribute=a.name or "erase", concepts=concepts, guides=guides)
    else:
        if not a.attribute:
            ap.error("--mode debias needs --attribute")
        from bench.methods.fair_mapping import default_occupations, read_lines

        occupations = read_lines(a.occupations, "occupation") if a.occupations else \
            default_occupations(pipe)[:20]
        if a.classifier:
            from bench.methods.rs_corrector_train import load_classifier
            classify = load_classifier(a.classifier)
        else:
            raise SpecError(f"--attribute {a.attribute}: give --classifier module:callable (the "
                            "model's group classifier; docs/methods.md)")
        deltas, info = debias(pipe, occupations, a.attribute, classify, iterations=a.iterations,
                              images=a.images, steps=a.sample_steps, guidance=a.guidance,
                              max_diff=a.max_diff, lam=a.lam, seed=a.seed, preserve=preserve,
                              step_size=a.step_size)
        card.update(attribute=a.name or a.attribute, occupations=occupations, **info)
    card.update(seconds=round(time.perf_counter() - start, 3),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write(a.out, deltas, card)
    norm = sum(float(d.norm() ** 2) for d in deltas.values()) ** 0.5
    print(f"wrote {a.out}: {len(deltas)} projections edited (|delta| {norm:.4g}) in "
          f"{card['seconds']:.1f} s")
    return 0
