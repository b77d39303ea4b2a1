"""Built-in method adapters, registered lazily by name."""
from bench.registry import METHODS

METHODS.register("baseline", "bench.methods.baseline:Baseline")
METHODS.register("sld-weak", "bench.methods.sld:SLDWeak")
METHODS.register("sld-medium", "bench.methods.sld:SLDMedium")
METHODS.register("sld-strong", "bench.methods.sld:SLDStrong")
METHODS.register("sld-max", "bench.methods.sld:SLDMax")
METHODS.register("fair-diffusion", "bench.methods.fair_diffusion:FairDiffusion")
METHODS.register("debias-vl", "bench.methods.debias_vl:DebiasVL")
METHODS.register("fair-mapping", "bench.methods.fair_mapping:FairMapping")
METHODS.register("rs-corrector", "bench.methods.rs_corrector:RSCorrector")
METHODS.register("negative-prompt", "bench.methods.negative_prompt:NegativePrompt")
METHODS.register("weights", "bench.methods.weights:Weights")
METHODS.register("uce", "bench.methods.uce:UCE")
METHODS.register("esd", "bench.methods.esd:ESD")
METHODS.register("sd-safety-checker", "bench.methods.safety_checker:SafetyChecker")
METHODS.register("safree", "bench.methods.safree:SAFREE")
