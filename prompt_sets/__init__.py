"""Built-in prompt sets, registered lazily by name."""
from bench.registry import PROMPT_SETS  # noqa: F401
