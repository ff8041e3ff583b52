"""Kernel-level profile of one ``compact`` call per layer on CUDA (diagnostic companion to
gpu_check.py): prints torch.profiler's table of the GPU kernels, most time first.

Run: ``python benchmarks/profile_compact.py`` (needs CUDA).
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from budgetopt.torch import compact  # noqa: E402


def main():
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    T, H, D = 131072, 8, 128
    keys = torch.randn(1, H, T, D, device=dev, dtype=torch.bfloat16, generator=gen)
    values = torch.randn(1, H, T, D, device=dev, dtype=torch.bfloat16, generator=gen)
    scores = torch.randn(1, H, T, device=dev, dtype=torch.float32, generator=gen)
    budgets = np.random.default_rng(0).integers(int(0.1 * T), int(0.3 * T), size=H)
    for _ in range(3):
        compact(keys, values, scores, budgets, sink=4, window=32)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            compact(keys, values, scores, budgets, sink=4, window=32)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
