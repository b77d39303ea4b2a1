"""Built-in method adapters, registered lazily by name."""
from bench.registry import METHODS

METHODS.register("baseline", "methods.baseline:Baseline")
