"""A direct reference for variable-length attention: what ``varlen_attn(..., enable_gqa=True,
return_aux=lse)`` computes, one sequence at a time. Used by the varlen cache tests and, as the
CPU stand-in for the kernel, by ``benchmarks/gpu_check.py --smoke``."""

from __future__ import annotations


def cpu_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    """Attention of query row ``i`` over keys ``cu_k[i]:cu_k[i + 1]`` (one KV head), with
    flash-attn's convention for an empty sequence (zero output, lse = +inf)."""
    import torch  # here, so that collecting this module needs no torch

    out = torch.zeros(q.shape[0], q.shape[1], v.shape[-1], device=q.device)
    lse = torch.full((q.shape[0], q.shape[1]), float("inf"), device=q.device)
    for i in range(cu_k.numel() - 1):
        s, e = int(cu_k[i]), int(cu_k[i + 1])
        if e > s:
            scores = (q[i].float() @ k[s:e, 0].float().T) * scale
            lse[i] = torch.logsumexp(scores, -1)
            out[i] = torch.softmax(scores, -1) @ v[s:e, 0].float()
    return out.to(q.dtype), lse
