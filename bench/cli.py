"""Command line: parses, builds a spec, calls one function per command. No logic lives here."""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from bench.spec import (RunSpec, SamplerSpec, SpecError, parse_kind_samples, read_config,
                        split_method_list)

RUN_EXAMPLES = """examples:
  bench run --methods all                                 # the default run, every method
  bench run --model sd15 --methods baseline --prompt-set occupations --device cuda
  bench run --model sd14 --methods baseline,sld-strong:warmup=5 --prompt-set i2p:hard=1,limit=100
  bench run --methods fair-mapping+sld-strong --guidance 1 --guidance 7.5 --dry-run
  bench run --config run.yaml --samples 8                 # flags override the YAML
  bench run --protocol i2p --prompt-set i2p:path=i2p_benchmark.csv   # the SLD paper's I2P setup
"""


def _add_sampler_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="alias (sd14, sd15, sd21-base, sdxl, tiny-random, "
                                   "tiny-random-xl), registered model (`bench list models`), hub "
                                   "id or local diffusers directory (default: the model of the "
                                   "default run a plugin registers)")
    p.add_argument("--steps", type=int, help="denoising steps (default 25)")
    p.add_argument("--resolution", type=int, help="image size in pixels (default: the model's)")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", help="float32, float16 or bfloat16 (default: float16 on cuda, "
                                   "float32 elsewhere)")
    p.add_argument("--scheduler", help="ddim, pndm, euler, euler-a, dpm++, heun, lms or a "
                                       "diffusers class name (default: the model's own)")
    p.add_argument("--vae", help="a VAE directory or hub id replacing the model's, e.g. "
                                 "madebyollin/sdxl-vae-fp16-fix (in the fingerprint)")
    p.add_argument("--guidance-rescale", type=float,
                   help="diffusers' guidance_rescale in [0, 1] (arXiv:2305.08891; default 0: off)")


TOP_EXAMPLES = """examples:
  bench run --methods all                      # the main job: the default run, every method
  bench run --methods baseline,sld-strong --samples 8 --dry-run     # the grid and its cost
  bench list methods                           # methods, metrics, prompt sets, models, protocols, suites
  bench report runs/latest                     # rescore and rebuild the tables of a run
  bench reproduce paper-results.zip --out runs/check && \\
      bench compare paper-results.zip runs/check

`bench COMMAND --help` describes each command's flags, with examples.
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line like every other bench error (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"bench: error: {self.prog}: {message}; see `{self.prog} --help`\n")


def names(value: str) -> str:
    """A comma list must name something: '' or ',,' is refused, not read as 'no filter'."""
    if not any(part.strip() for part in value.split(",")):
        raise argparse.ArgumentTypeError(f"'{value}' names nothing; write a comma list of names")
    return value


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="bench", description="Fairness and safety benchmark "
                                   "harness for text-to-image diffusion models.",
                                   epilog=TOP_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = root.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    run = sub.add_parser("run", help="generate, score and report", epilog=RUN_EXAMPLES,
                         formatter_class=fmt)
    _add_sampler_flags(run)
    run.add_argument("--methods", type=names,
                     help="'all' or a comma list of name[:key=value,...]; join "
                          "methods with + to compose them (default: baseline)")
    run.add_argument("--prompt-set", action="append", dest="prompt_sets",
                     help="registered name[:options] or a prompt file; repeatable")
    run.add_argument("--suite", action="append", dest="suites",
                     help="evaluation suite for the prompt sets (bench list suites; default: "
                          "each set's own, else fairness/safety); repeatable")
    run.add_argument("--samples", type=int, help="images per prompt (default 4)")
    run.add_argument("--samples-by-kind", metavar="KIND=N,...",
                     help="images per prompt by the prompt's meta.kind or <set>.<kind>, over "
                          "--samples, e.g. neutral=32,group=2; 'none' for --samples everywhere "
                          "(default: those of the model's registered default run, for its "
                          "default prompt sets)")
    run.add_argument("--seed", type=int, help="run seed (default 0)")
    run.add_argument("--guidance", type=float, action="append",
                     help="classifier-free guidance scale; repeat to sweep (default 7.5)")
    run.add_argument("--batch-size", type=int, help="images per UNet batch (default 8)")
    run.add_argument("--metrics", type=names,
                     help="'all', 'none' or a comma list of scorer names with options, "
                          "e.g. fairface:weights=res34.pt (default all)")
    run.add_argument("--limit", type=int, help="at most this many prompts per prompt set")
    run.add_argument("--shard", help="i/n: generate only shard i of n (0-based)")
    run.add_argument("--executor", choices=["local", "ray"],
                     help="local (default) or ray: one worker per GPU on a Ray cluster "
                          "(RAY_ADDRESS, else a private local instance); see docs/scaling.md")
    run.add_argument("--workers", type=int,
                     help="Ray workers (default: one per GPU in the cluster, else 1)")
    run.add_argument("--out", help="run directory (default runs/<spec id>, one per spec; "
                                   "runs/latest points at the newest)")
    run.add_argument("--config", help="YAML run spec; flags override it")
    run.add_argument("--protocol", help="a paper's whole setup in one word (see `bench list "
                                        "protocols`); config keys and flags override it, each "
                                        "change printed as a deviation")
    run.add_argument("--compile", action="store_true", default=None,
                     help="torch.compile the UNet after loading (in the cache key; the first "
                          "batch of each shape pays the compilation)")
    run.add_argument("--vae-slicing", action="store_true", default=None,
                     help="decode one image at a time (less memory, same pixels)")
    run.add_argument("--vae-tiling", action="store_true", default=None,
                     help="decode in overlapping tiles (less memory above the VAE's tile size; "
                          "changes pixels there: in the cache key)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the grid size and UNet evaluations; generate nothing")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bars (ours or the libraries'), no closing summary")
    run.add_argument("--columns", type=names,
                     help="only these metrics in the md/tex/html leaderboards: comma list of "
                          "names, prefixes (parity_l2 takes parity_l2[skin]) or globs (clip*); "
                          "leaderboard.csv keeps every metric")

    lst = sub.add_parser("list", help="list registered methods, metrics, prompt sets or models",
                         epilog="examples:\n  bench list methods\n  bench list prompt-sets",
                         formatter_class=fmt)
    lst.add_argument("what", choices=["methods", "metrics", "prompt-sets", "models", "protocols",
                                      "suites", "plugins"])

    gen = sub.add_parser("generate", help="one prompt, one seed, one method, to a PNG (debugging)",
                         epilog="example:\n  bench generate --model tiny-random --method sld-max "
                                "--prompt 'a photo of a nurse' --seed 3 --out nurse.png",
                         formatter_class=fmt)
    _add_sampler_flags(gen)
    gen.add_argument("--method", default="baseline", help="method spec (default baseline)")
    gen.add_argument("--prompt", required=True, help="the prompt text")
    gen.add_argument("--seed", type=int, default=0,
                     help="the image's seed, as a run's grid gives it (default 0)")
    gen.add_argument("--guidance", type=float, default=7.5,
                     help="classifier-free guidance scale (default 7.5)")
    gen.add_argument("--out", required=True, help="output PNG path")

    rep = sub.add_parser("report", help="rescore and rebuild tables and plots from a run directory",
                         epilog="example:\n  bench report runs/latest", formatter_class=fmt)
    rep.add_argument("run_dir", help="a run directory (as `bench run` printed it, e.g. "
                                      "runs/latest) or a bundle .zip")
    rep.add_argument("--metrics", type=names,
                     help="'all' or a comma list of scorer names (default: the "
                          "run's own)")
    rep.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    rep.add_argument("--columns", type=names,
                     help="only these metrics in the md/tex/html leaderboards: comma list of "
                          "names, prefixes (parity_l2 takes parity_l2[skin]) or globs (clip*); "
                          "leaderboard.csv keeps every metric")

    train = sub.add_parser("train", help="train a method's checkpoint",
                           epilog="examples:\n  bench train fair-mapping --model sd15 --attribute "
                                  "gender --out ckpt/fm\n  bench train rs-corrector --help",
                           formatter_class=fmt)
    train.add_argument("method", choices=["fair-mapping", "rs-corrector", "uce", "esd"])
    train.add_argument("args", nargs=argparse.REMAINDER, help="the trainer's own flags")

    _add_reproducibility_commands(sub, fmt)
    _add_plugin_commands(sub, fmt)
    return root


def _add_plugin_commands(sub: argparse._SubParsersAction, fmt: type) -> None:
    """`bench NAME ARGS...` for each command a plugin registers (bench.plugins.COMMANDS); a
    built-in command keeps its name."""
    from bench.plugins import COMMANDS

    for name in COMMANDS.names():
        if name not in sub.choices:
            command = COMMANDS.get(name)
            p = sub.add_parser(name, help=command.help, epilog=command.epilog, formatter_class=fmt)
            p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")


def _add_reproducibility_commands(sub: argparse._SubParsersAction, fmt: type) -> None:
    rep = sub.add_parser("reproduce", help="re-run what a manifest or bundle describes, after "
                         "listing how this setup differs", formatter_class=fmt, epilog=(
                             "examples:\n  bench reproduce runs/latest --out runs/check\n"
                             "  bench reproduce paper-results.zip --device cuda\n"
                             "  bench reproduce runs/latest/manifest.json --allow-drift"))
    rep.add_argument("source", help="run directory, its manifest.json, or a bundle .zip")
    rep.add_argument("--out", help="new run directory (default: SOURCE-reproduced)")
    rep.add_argument("--allow-drift", action="store_true",
                     help="run even if prompt sets, the model or method parameters differ")
    rep.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    rep.add_argument("--dtype", help="float32, float16 or bfloat16 (default: the manifest's)")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")

    cmp = sub.add_parser("compare", help="compare two runs or bundles image by image and cell by "
                         "cell; exit 1 when they disagree", formatter_class=fmt, epilog=(
                             "examples:\n  bench compare runs/latest runs/check\n"
                             "  bench compare paper-results.zip runs/ci --format json --out cmp.json"
                             "\n  bench compare a b --tolerance 2/255 --include-latency --strict"))
    cmp.add_argument("run_a", help="run directory or bundle .zip")
    cmp.add_argument("run_b", help="run directory or bundle .zip")
    cmp.add_argument("--tolerance", default="1/255",
                     help="per-pixel difference counted as matching, of full scale (default 1/255)")
    cmp.add_argument("--format", choices=["md", "json"], default="md")
    cmp.add_argument("--out", help="write the comparison here (default: stdout)")
    cmp.add_argument("--include-latency", action="store_true",
                     help="also compare wall-clock timing cells (noisy across runs)")
    cmp.add_argument("--strict", action="store_true",
                     help="also fail when an image differs beyond the tolerance or is in one run "
                     "only, or a scorer's set-up (weight fingerprints, options) differs")

    bun = sub.add_parser("bundle", help="pack a run's manifest, tables, report and an image sample "
                         "into a deterministic zip", formatter_class=fmt, epilog=(
                             "examples:\n  bench bundle runs/latest --out paper-results.zip\n"
                             "  bench bundle runs/latest --out all.zip --images all"))
    bun.add_argument("run_dir", help="a finished run directory (with leaderboard.csv; e.g. "
                                      "runs/latest)")
    bun.add_argument("--out", required=True, help="bundle path (.zip)")
    bun.add_argument("--images", default="16",
                     help="how many images to include (first N cache keys, sorted) or 'all' "
                          "(default 16)")


def spec_from_args(a: argparse.Namespace) -> RunSpec:
    data = read_config(a.config) if a.config else {}
    protocol = a.protocol or data.get("protocol")
    if protocol:  # the paper's values go under the config's keys, flags above both
        from bench import protocols

        data = protocols.get(protocol).defaults(data)
    base = RunSpec.from_dict(data)
    pick = lambda new, old: old if new is None else new  # noqa: E731  (0 is a value: refused, not dropped)
    sampler = base.sampler
    sampler = SamplerSpec(
        steps=pick(a.steps, sampler.steps),
        guidance=sampler.guidance,
        height=pick(a.resolution, sampler.height),
        width=pick(a.resolution, sampler.width),
        scheduler=pick(a.scheduler, sampler.scheduler),
        negative_prompt=sampler.negative_prompt,
        guidance_rescale=pick(a.guidance_rescale, sampler.guidance_rescale))
    return RunSpec(
        model=pick(a.model, base.model),
        methods=base.methods if a.methods is None else (a.methods,),
        prompt_sets=tuple(a.prompt_sets) if a.prompt_sets else base.prompt_sets,
        suites=tuple(a.suites) if a.suites else base.suites,
        samples=pick(a.samples, base.samples),
        samples_by_kind=(base.samples_by_kind if a.samples_by_kind is None
                         else parse_kind_samples(a.samples_by_kind)),
        seed=pick(a.seed, base.seed),
        guidance=tuple(a.guidance) if a.guidance else base.guidance,
        sampler=sampler,
        batch_size=pick(a.batch_size, base.batch_size),
        device=pick(a.device, base.device),
        metrics=base.metrics if a.metrics is None else tuple(split_method_list(a.metrics)),
        limit=pick(a.limit, base.limit),
        out=pick(a.out, base.out),
        shard=pick(a.shard, base.shard),
        executor=pick(a.executor, base.executor),
        workers=pick(a.workers, base.workers),
        protocol=base.protocol,
        dtype=pick(a.dtype, base.dtype),
        vae=pick(a.vae, base.vae),
        timing_rounds=base.timing_rounds,  # config only: no flag
        compile=pick(a.compile, base.compile),
        vae_slicing=pick(a.vae_slicing, base.vae_slicing),
        vae_tiling=pick(a.vae_tiling, base.vae_tiling),
    )


def quiet_libraries() -> None:
    """--quiet: diffusers' and transformers' own bars ("Loading pipeline components", "Loading
    weights") and the hub's download bars too, not only ours."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            __import__(module, fromlist=["disable_progress_bar"]).disable_progress_bar()
        except ImportError:  # an optional library: nothing of it to silence
            pass


def cmd_run(a: argparse.Namespace) -> int:
    import time

    from bench import planning, runner

    if a.quiet:
        quiet_libraries()
    started = time.monotonic()
    spec = spec_from_args(a)
    p = planning.plan(spec, dry_run=a.dry_run)
    for note in p.deviations:
        print(f"bench: note: protocol {spec.protocol} deviation: {note}", file=sys.stderr)
    if a.dry_run:
        print(planning.dry_run_summary(p))
        if p.pipe is not None and p.items:  # one timed batch: the whole grid's cost
            from bench.projection import calibrate, projection_lines

            print("\n".join(projection_lines(p, calibrate(p))))
        return 0
    out = runner.execute(p, quiet=a.quiet, columns=a.columns)
    if not a.quiet:
        print(runner.run_summary(p, out, time.monotonic() - started))
    print(f"run directory: {out}")
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from bench import catalog

    print(catalog.listing(a.what))
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from bench import debug

    steps = 25 if a.steps is None else a.steps
    RunSpec(methods=(a.method,), seed=a.seed, guidance=(a.guidance,),  # bench run's checks
            sampler=SamplerSpec(steps=steps, height=a.resolution, width=a.resolution,
                                scheduler=a.scheduler, guidance_rescale=a.guidance_rescale or 0.0),
            dtype=a.dtype, vae=a.vae)
    output_file(a.out, ".png")
    try:  # Python keeps argv bytes that are not UTF-8 as lone surrogates the tokenizer rejects
        a.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError(f"--prompt {a.prompt!r}: not UTF-8 text; pass the prompt in UTF-8") from None
    from bench.plugins import default_model

    debug.generate_one(model=a.model or default_model(), method=a.method, prompt=a.prompt, seed=a.seed,
                       guidance=a.guidance, steps=steps, resolution=a.resolution,
                       device=a.device, out=Path(a.out), dtype=a.dtype, scheduler=a.scheduler,
                       guidance_rescale=a.guidance_rescale or 0.0, vae=a.vae)
    print(f"wrote {a.out}")
    return 0


def output_file(text: str, suffix: str | None = None) -> Path:
    """A file a command will write, refused before any work when it cannot be one."""
    from bench.planning import check_out_dir

    path = Path(text)
    if suffix and path.suffix.lower() != suffix:
        raise SpecError(f"--out {text}: write a {suffix} file path")
    if path.is_dir():
        raise SpecError(f"--out {text} is a directory; give a file path")
    check_out_dir(path.parent)
    return path


def cmd_report(a: argparse.Namespace) -> int:
    from bench import runner

    if a.quiet:
        quiet_libraries()

    run_dir = Path(a.run_dir)
    if run_dir.suffix == ".zip":  # a bundle: extracted beside it, reported from its stored scores
        from bench import bundle

        out = runner.report_run(bundle.for_report(run_dir, a.metrics), quiet=a.quiet,
                                columns=a.columns, rescore=False)
    else:
        out = runner.report_run(run_dir, metrics=a.metrics, device=a.device, quiet=a.quiet,
                                columns=a.columns)
    print(f"report: {out}")
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from bench import reproduce

    if a.quiet:
        quiet_libraries()
    out = reproduce.reproduce(Path(a.source), Path(a.out) if a.out else None,
                              allow_drift=a.allow_drift, device=a.device, quiet=a.quiet,
                              dtype=a.dtype)
    print(f"run directory: {out}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from bench import compare

    tolerance = compare.parse_tolerance(a.tolerance)
    if a.out:
        output_file(a.out)
    c = compare.compare(Path(a.run_a), Path(a.run_b), tolerance, include_latency=a.include_latency)
    text = (compare.to_json if a.format == "json" else compare.markdown)(c, strict=a.strict)
    if a.out:
        Path(a.out).write_text(text)
        print(c.verdict(a.strict))
    else:
        print(text, end="")
    return 0 if c.agrees(a.strict) else 1


def cmd_bundle(a: argparse.Namespace) -> int:
    from bench import bundle

    if a.images != "all" and not a.images.isdigit():
        raise bundle.BundleError(f"--images '{a.images}': write a number or 'all'")
    output_file(a.out, ".zip")  # reproduce and compare know a bundle by its suffix
    info = bundle.bundle(Path(a.run_dir), Path(a.out), None if a.images == "all" else int(a.images))
    print(f"bundle: {a.out} ({info['images']['included']} of {info['images']['in_run']} images, "
          f"{len(info['prompt_files'])} prompt files)")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    if a.method == "fair-mapping":
        from bench.methods.fair_mapping_train import main as train_main
    elif a.method == "uce":
        from bench.methods.uce_train import main as train_main
    elif a.method == "esd":
        from bench.methods.esd_train import main as train_main
    else:
        from bench.methods.rs_corrector_train import main as train_main
    return train_main(a.args) or 0


def cmd_plugin(a: argparse.Namespace) -> int:
    from bench.plugins import run_command

    return run_command(a.command, a.args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "list": cmd_list, "generate": cmd_generate, "report": cmd_report,
    "train": cmd_train, "reproduce": cmd_reproduce, "compare": cmd_compare,
    "bundle": cmd_bundle,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        return COMMANDS.get(args.command, cmd_plugin)(args)
    except SystemExit as exc:  # --help (0) or a usage error, already printed (2)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except KeyboardInterrupt:
        print("bench: interrupted; finished images are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for expected errors; traceback for bugs
        from bench.errors import USER_ERRORS

        if isinstance(exc, USER_ERRORS):
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            print(f"bench: error: {disk_error(exc)}", file=sys.stderr)
            return 2
        raise


# A full disk or a file system that turned read-only: the user's to fix, not a bug. Every store
# write is a temp file + rename, so what was written before stays whole.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def disk_error(exc: OSError) -> str:
    where = f" writing {exc.filename}" if exc.filename else ""
    return (f"{exc.strerror}{where}; free space or choose another --out, then rerun the same "
            f"command (finished images are kept)")


if __name__ == "__main__":
    sys.exit(main())
