"""Plain Stable Diffusion: the sampler with no hooks."""
from bench.adapter import Adapter


class Baseline(Adapter):
    name = "baseline"
    description = "Stable Diffusion as is: classifier-free guidance, no intervention."
