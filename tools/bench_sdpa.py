#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention at the shapes of bench/gpu_attention.cpp, as the baseline.

bf16 on CUDA, causal, grouped-query heads (enable_gqa=True): B=1, H=16 query heads, KV = 8 and 4,
T = S = 2048, head_dim 128 and 256. Times the forward and forward + backward with CUDA events (median of
20 after warm-up) and prints the same rows as the C++ benchmark,
    RESULT|torch_sdpa_fwd|<shape>|<TFLOP/s>|TFLOP/s|<% of ceiling>|gemm_bf16
with the same FLOP convention (forward 4 B H T S D, backward 2.5x that, halved for the causal mask) and
torch.matmul's bf16 rate at 8192^3 as the ceiling. Exits 0 with a message when torch or CUDA is missing.
Usage: python3 tools/bench_sdpa.py
"""
import sys


def main() -> int:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("bench_sdpa: torch is not installed; no PyTorch baseline")
        return 0
    if not torch.cuda.is_available():
        print("bench_sdpa: torch has no usable CUDA device; no PyTorch baseline")
        return 0

    dev = torch.device("cuda")
    print(f"bench_sdpa: torch {torch.__version__} on {torch.cuda.get_device_name(dev)}")

    def median_ms(fn, warmup=3, reps=20):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(reps):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        times.sort()
        return times[len(times) // 2]

    def report(kernel, shape, value, ceiling):
        pct = 100.0 * value / ceiling if ceiling > 0 else 0.0
        print(f"RESULT|{kernel}|{shape}|{value:.1f}|TFLOP/s|{pct:.0f}|gemm_bf16", flush=True)

    n = 8192
    a = torch.rand(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.rand(n, n, device=dev, dtype=torch.bfloat16)
    ms = median_ms(lambda: torch.matmul(a, b), reps=10)
    ceiling = 2.0 * n**3 / (ms * 1e-3) / 1e12
    print(f"CEILING|torch_gemm_bf16_tflops|{ceiling:.1f}")
    del a, b

    B, H, T = 1, 16, 2048
    for D in (128, 256):
        for KV in (8, 4):
            S = T
            shape = f"B={B} H={H} KV={KV} T=S={T} D={D} causal bf16"
            # SDPA's layout is [B, heads, T, D].
            q = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(B, KV, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(B, KV, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
            g = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16)
            fwd_flops = 0.5 * 4.0 * B * H * T * S * D
            bwd_flops = 2.5 * fwd_flops

            def fwd():
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

            def fwdbwd():
                q.grad = k.grad = v.grad = None  # as a training step sees them: no accumulation
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                out.backward(g)

            try:
                fwd_ms = median_ms(fwd)
                both_ms = median_ms(fwdbwd)
            except RuntimeError as e:  # e.g. no fused kernel for this head dim on this GPU
                print(f"bench_sdpa: {shape}: {e}")
                continue
            report("torch_sdpa_fwd", shape, fwd_flops / (fwd_ms * 1e-3) / 1e12, ceiling)
            report("torch_sdpa_fwdbwd", shape, (fwd_flops + bwd_flops) / (both_ms * 1e-3) / 1e12, ceiling)
            print(f"  {shape}: fwd {fwd_ms:.3f} ms, fwd+bwd {both_ms:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
