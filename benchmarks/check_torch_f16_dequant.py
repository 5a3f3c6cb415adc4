"""Which float16 rounding does vLLM's per-tensor FP8 dequantize do? (run on the GPU machine, with torch)

vLLM re-quantizes fused per-tensor FP8 shards with ``per_tensor_dequantize``: ``tensor.to(float16) * inv_scale``
where ``inv_scale = weight_scale[idx]`` is a 0-d float32 CUDA tensor. The result is float16; the question is
whether torch multiplies by the float32 scale (A: ``f16(f32(q) * s)``, what SPEC section 3 says) or first rounds
the scale to float16 (B: ``f16(f32(q) * f32(f16(s)))``). This prints how many of the 254 finite e4m3fn codes times
each scale agree with A and with B.
"""

import torch

codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
codes = codes[~torch.isnan(codes.float())].cuda()
weight_scale = torch.tensor([1.8978e-4, 1.5e-4, 3.3e-5, 2.0e-6, 7.31e-3, 0.01234567], dtype=torch.float32).cuda()
for idx in range(weight_scale.numel()):
    s = weight_scale[idx]  # 0-d CUDA tensor, as in vLLM's loop over shards
    got = codes.to(torch.float16) * s
    a = (codes.float() * s).to(torch.float16)
    b = (codes.float() * s.to(torch.float16).float()).to(torch.float16)
    print(f"scale {s.item():.6g}: result dtype {got.dtype}; equal to A (f32 scale) {int((got == a).sum())}/"
          f"{got.numel()}, equal to B (f16-rounded scale) {int((got == b).sum())}/{got.numel()}, A==B "
          f"{int((a == b).sum())}")
