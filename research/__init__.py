"""Research scripts on the synthetic world (not installed): probes cited in docs/methods.md.
Run from the repository root: `python -m research.centroid_probe`, `python -m research.mixup_probe`."""
