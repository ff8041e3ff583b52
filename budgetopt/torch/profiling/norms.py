"""Value-output norms: how much each query head's values move the residual stream, per token.

Torch only (no kvpress).
"""

from __future__ import annotations

import torch

from ...errors import InvalidInputError

__all__ = ["value_output_norms"]


def value_output_norms(geometry, values, *, length=None):
    """Normalised value-output norms of every query head, unreduced: ``(layers, heads, T)``.

    .. math::

        n[l, q, j] = \\lVert W_O[l][:, q] \\, v[l, g(q), j] \\rVert, \\qquad
        \\textstyle\\sum_{q, j} n[l, q, j] = 1 \\text{ for every layer } l,

    where ``W_O[l][:, q]`` is query head ``q``'s column block of the output projection and
    ``g(q) = q // (heads // kv_heads)`` its KV head. Computed as ``sqrt(v^T G_q v)`` with the
    Gram matrix ``G_q = W_O[:, q]^T W_O[:, q]`` (``head_dim x head_dim``), in float32.

    Parameters
    ----------
    geometry : ModelGeometry
    values : sequence of torch.Tensor or transformers Cache
        Per layer, the cached values ``(1, kv_heads, T_l, head_dim)``; a Cache gives its
        layers' ``values``. A layer holding fewer than ``length`` tokens (a sliding-window
        layer) holds the last ``T_l``; the tokens it no longer holds get ``n = 0``.
    length : int, optional
        ``T``; default: the longest layer.

    Returns
    -------
    torch.Tensor
        float32 ``(layers, heads, T)`` on the values' device.

    Notes
    -----
    Cost per layer: ``heads * head_dim^2 * (hidden + T)`` multiply-adds.

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from budgetopt.torch.geometry import model_geometry
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    >>> g = model_geometry(LlamaForCausalLM(cfg))
    >>> n = value_output_norms(g, [torch.randn(1, 2, 5, 8) for _ in range(2)])
    >>> tuple(n.shape), [round(float(s), 5) for s in n.sum(dim=(1, 2))]
    ((2, 4, 5), [1.0, 1.0])
    """
    if hasattr(values, "layers"):
        values = [layer.values for layer in values.layers]
    values = list(values)
    if len(values) != geometry.layers:
        raise InvalidInputError(f"`values` must hold {geometry.layers} layers; got {len(values)}")
    if length is None:
        length = max(v.shape[2] for v in values)
    out = None
    for layer, v in enumerate(values):
        if v.ndim != 4 or v.shape[0] != 1 or v.shape[1] != geometry.kv_heads or v.shape[3] != geometry.head_dim:
            raise InvalidInputError(
                f"`values` layer {layer} must be shaped (1, {geometry.kv_heads}, T, {geometry.head_dim}); "
                f"got {tuple(v.shape)}"
            )
        if out is None:
            out = torch.zeros((geometry.layers, geometry.heads, length), dtype=torch.float32, device=v.device)
        w = geometry.o_proj_weight(layer).detach().to(device=v.device, dtype=torch.float32)
        w = w.view(w.shape[0], geometry.heads, geometry.head_dim)
        gram = torch.einsum("khd,khe->hde", w, w)  # (heads, d, d)
        held = min(v.shape[2], length)
        vq = v[0, :, v.shape[2] - held:].float().repeat_interleave(geometry.group, dim=0)  # (heads, held, d)
        sq = (torch.bmm(vq, gram) * vq).sum(-1).clamp_(min=0)
        norms = sq.sqrt_()
        total = norms.sum()
        if total > 0:
            norms /= total
        out[layer, :, length - held:] = norms
    return out
