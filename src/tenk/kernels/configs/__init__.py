"""Launch configs for tenk's Triton kernels, kept as JSON per weight format and GPU model
(nvfp4_h100.json, fp8_h200.json, ...), and the loaders that pick one (nvfp4.py, fp8.py).
Regenerate the JSON with benchmarks/tune_nvfp4.py and benchmarks/tune_fp8.py."""
