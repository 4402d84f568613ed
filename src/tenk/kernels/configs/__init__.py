"""Launch configs for tenk's Triton kernels, kept as JSON per GPU model (nvfp4_h100.json, ...) and
the loaders that pick one (nvfp4.py). Regenerate the JSON with benchmarks/tune_nvfp4.py."""
