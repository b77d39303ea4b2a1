"""Built-in scorers and aggregators, registered lazily by name."""
from bench.registry import METRICS  # noqa: F401
