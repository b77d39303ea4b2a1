"""Built-in prompt sets, registered lazily by name."""
from bench.registry import PROMPT_SETS

PROMPT_SETS.register("occupations", "bench.prompt_sets.occupations:load_occupations")
PROMPT_SETS.register("i2p", "bench.prompt_sets.i2p:load_i2p")
PROMPT_SETS.register("coco-30k", "bench.prompt_sets.coco:load_coco30k")
PROMPT_SETS.register("overcorrection", "bench.prompt_sets.overcorrection:load_overcorrection")
