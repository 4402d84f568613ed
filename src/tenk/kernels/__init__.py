"""GPU kernels and their torch references (DESIGN.md: "Every Triton kernel has a plain PyTorch
reference with the same signature").

Each public op dispatches to Triton for CUDA tensors and to the reference elsewhere:
  attention.paged_attention / store_kvcache   (attention_triton: grouped decode, split-KV, prefill)
  moe.fused_moe, moe.moe_align_block_size      (grouped_mm or Triton grouped GEMM)
  rmsnorm.rms_norm / fused_add_rms_norm, rotary.apply_rotary, activation.silu_and_mul
testing.py builds random cases shared by tests and benchmarks/kernels_gpu.py; interpret.py runs the
kernels on CPU through Triton's interpreter. Modules import without Triton (CPU-only installs).
"""
