"""The oracle's attention patching: while the model answers, each generated step's attention row
over the context, times the value-output norms, is folded into a ``(batch, layers, kv_heads, T)``
accumulator (batch: rows decoded together over one context, such as probes).

:class:`OracleAttention` switches the model's attention implementation to a registered function
(``"budgetopt_oracle_eager"`` or ``"budgetopt_oracle_sdpa"``: the model's own kernel for the
output, plus the one row the oracle needs) and restores it on exit, even on error;
:class:`OracleState` holds the accumulator. No ``(heads, T, T)`` matrix is formed.
"""

from __future__ import annotations

import sys

import torch

from .. import _kvpress  # noqa: F401  (kvpress patches transformers' attention first, as at run time)

from transformers import AttentionInterface  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask  # noqa: E402

__all__ = ["OracleState", "OracleAttention"]


class OracleState:
    """What the registered attention function needs while the question/decode passes run."""

    def __init__(self, norms, context, group, head_reduce, step_reduce):
        self.norms = norms  # (layers, heads, T) float32
        self.context = context  # T
        self.group = group
        self.head_reduce = head_reduce
        self.step_reduce = step_reduce
        self.seq_len = 0  # tokens in the sequence after the current pass
        self.acc = None  # (batch, layers, kv_heads, T) float32, per question (batch: probes decoded together)
        self.active = None
        self.rows = 0

    def reset(self, kv_heads, batch=1):
        """Zero the accumulator for ``batch`` rows over the same context (all rows active)."""
        layers, _, length = self.norms.shape
        self.acc = torch.zeros((batch, layers, kv_heads, length), dtype=torch.float32, device=self.norms.device)
        self.active = None  # None: every row; else a (batch,) bool tensor of the rows still decoding

    def add_row(self, module, query, key, attention_mask, scaling, softcap):
        """Fold each batch row's last query row's attention over the context into the accumulator."""
        # query (B, H, q, d), key (B, Hkv, K, d): scores of the last query row only.
        batch, kv_heads, klen = key.shape[0], key.shape[1], key.shape[2]
        q = query[:, :, -1].float().view(batch, kv_heads, self.group, -1)
        logits = torch.einsum("bkgd,bktd->bkgt", q, key.float()) * scaling
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if attention_mask is not None:
            row = attention_mask[:, :, -1, -klen:]  # (1 or B, 1 or heads, K)
            row = (row.view(row.shape[0], 1, 1, klen) if row.shape[1] == 1
                   else row.view(row.shape[0], kv_heads, self.group, klen))
            if row.dtype == torch.bool:
                logits = logits.masked_fill(~row, float("-inf"))
            else:
                logits = logits + row.float()
        probs = torch.softmax(logits, dim=-1)
        # Key column c holds sequence position seq_len - K + c (sliding-window layers keep the
        # last K tokens); context position j is column j - offset.
        offset = self.seq_len - klen
        length = self.context
        if offset == 0:
            ctx = probs[..., :length]
        else:
            ctx = torch.zeros((batch, kv_heads, self.group, length), dtype=torch.float32, device=probs.device)
            first = max(offset, 0)
            if first < length:
                ctx[..., first:] = probs[..., first - offset:length - offset]
        layer = module.layer_idx
        weighted = ctx * self.norms[layer].view(1, kv_heads, self.group, length)
        reduced = weighted.amax(dim=2) if self.head_reduce == "max" else weighted.mean(dim=2)
        acc = self.acc[:, layer]
        if self.step_reduce == "max":
            reduced = torch.maximum(acc, reduced)
        else:
            reduced = acc + reduced
        if self.active is not None:
            reduced = torch.where(self.active.view(-1, 1, 1), reduced, acc)
        self.acc[:, layer] = reduced


_ORACLE_NAMES = {"eager": "budgetopt_oracle_eager", "sdpa": "budgetopt_oracle_sdpa"}
_STATE_ATTR = "_budgetopt_oracle_state"


def _eager_of(module):
    """The eager attention function of ``module``'s own modeling file."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:  # pragma: no cover - every transformers decoder defines one
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def _make_oracle_attention(base):
    def oracle_attention(module, query, key, value, attention_mask, *args, **kwargs):
        fn = _eager_of(module) if base == "eager" else AttentionInterface._global_mapping["sdpa"]
        output = fn(module, query, key, value, attention_mask, *args, **kwargs)
        state = getattr(module, _STATE_ATTR, None)
        if state is not None:
            scaling = kwargs.get("scaling")
            if scaling is None:
                scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
            state.add_row(module, query, key, attention_mask, scaling, kwargs.get("softcap"))
        return output

    return oracle_attention


def _register_oracle_attention():
    for base, name in _ORACLE_NAMES.items():
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _make_oracle_attention(base))
            AttentionMaskInterface.register(name, eager_mask if base == "eager" else sdpa_mask)


class OracleAttention:
    """Context manager: switch the model's attention to the oracle function, restore after."""

    def __init__(self, model, geometry, state):
        self.model, self.geometry, self.state = model, geometry, state
        self.saved = []

    def __enter__(self):
        _register_oracle_attention()
        configs = {id(self.model.config): self.model.config}
        for module in self.geometry.attention:
            configs.setdefault(id(module.config), module.config)
        for config in configs.values():
            current = config._attn_implementation_internal
            self.saved.append((config, current))
        for config, current in self.saved:
            name = _ORACLE_NAMES["eager" if current in (None, "eager") else "sdpa"]
            config._attn_implementation_internal = name
        for module in self.geometry.attention:
            setattr(module, _STATE_ATTR, self.state)
        return self

    def __exit__(self, *exc):
        for module in self.geometry.attention:
            if hasattr(module, _STATE_ATTR):
                delattr(module, _STATE_ATTR)
        for config, current in self.saved:
            config._attn_implementation_internal = current
        return False
