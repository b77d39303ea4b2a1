"""Built-in method adapters, registered lazily by name."""
from bench.registry import METHODS

METHODS.register("baseline", "methods.baseline:Baseline")
METHODS.register("sld-weak", "methods.sld:SLDWeak")
METHODS.register("sld-medium", "methods.sld:SLDMedium")
METHODS.register("sld-strong", "methods.sld:SLDStrong")
METHODS.register("sld-max", "methods.sld:SLDMax")
METHODS.register("fair-diffusion", "methods.fair_diffusion:FairDiffusion")
METHODS.register("debias-vl", "methods.debias_vl:DebiasVL")
METHODS.register("fair-mapping", "methods.fair_mapping:FairMapping")
METHODS.register("rs-corrector", "methods.rs_corrector:RSCorrector")
METHODS.register("negative-prompt", "methods.negative_prompt:NegativePrompt")
METHODS.register("weights", "methods.weights:Weights")
METHODS.register("uce", "methods.uce:UCE")
