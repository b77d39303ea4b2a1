"""--dry-run projection: one timed batch scaled by each method's UNet evaluations (simulated clock)."""
from __future__ import annotations

from bench import planning
from bench.projection import calibrate, project, projection_lines
from bench.spec import RunSpec, SamplerSpec


def test_projection_scales_one_batch_by_unet_evaluations(prompt_file):
    prompts = prompt_file([f"a photo of person number {i}" for i in range(5)])
    spec = RunSpec(model="tiny-random", methods=("baseline", "sld-max"), prompt_sets=(str(prompts),),
                   samples=2, batch_size=4, sampler=SamplerSpec(steps=3), metrics=("none",))
    p = planning.plan(spec)
    ticks = iter([100.0, 106.0])  # the timed batch takes 6 s on the simulated clock
    spe = calibrate(p, clock=lambda: next(ticks))
    base, sld = p.cost["baseline"], p.cost["sld-max"]
    assert sld > base  # SLD's extra branch
    assert spe == 6.0 / (4 * base)  # first batch: 4 baseline images
    assert project(p, spe) == {"baseline": 10 * base * spe, "sld-max": 10 * sld * spe}
    lines = projection_lines(p, spe)
    total = 10 * (base + sld) * spe
    assert f"{total / 3600:.2f} GPU-hours" in lines[0] and len(lines) == 3
