"""A decoder's attention geometry (layers, query heads, KV heads) read from a transformers model.

The one reader of a model's layers and KV heads: the profiler (:func:`model_geometry`) and the
presses that check a table against a model (``BudgetPress``, ``RequestBudgetPress``, through
:func:`config_heads`) all read them here, from the decoder's text configuration
(``config.get_text_config()``, so a multimodal model's language part is the one read).
Torch only; kvpress is not imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InvalidInputError, InvalidTypeError

__all__ = ["ModelGeometry", "SUPPORTED_MODEL_TYPES", "model_geometry", "text_config", "config_heads"]

#: ``config.model_type`` values accepted (the families kvpress supports).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3", "gemma3_text")


def text_config(config):
    """The decoder's part of a transformers ``config``: ``config.get_text_config()`` where the
    config has it (a multimodal model's language model), else ``config`` itself."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_heads(config):
    """``(layers, heads, kv_heads)`` of a transformers ``config``'s decoder, ``None`` where a
    field is missing; ``kv_heads`` defaults to ``heads`` (multi-head attention).

    Examples
    --------
    >>> from transformers import LlamaConfig
    >>> config_heads(LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    (2, 4, 2)
    """
    text = text_config(config)
    heads = getattr(text, "num_attention_heads", None)
    return getattr(text, "num_hidden_layers", None), heads, getattr(text, "num_key_value_heads", None) or heads


@dataclass(frozen=True)
class ModelGeometry:
    """Shape of a decoder's attention, read from the model itself.

    Attributes
    ----------
    model_type : str
        ``config.model_type`` (``"llama"``, ``"qwen2"``, ...).
    layers, heads, kv_heads, head_dim : int
        Decoder layers, query heads, key/value heads and head dimension.
    attention : tuple of torch.nn.Module
        The attention module of each layer (``layer.self_attn``), in order.
    """

    model_type: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    attention: tuple = field(repr=False, compare=False, default=())

    @property
    def group(self):
        """Query heads per KV head (``heads // kv_heads``)."""
        return self.heads // self.kv_heads

    def o_proj_weight(self, layer):
        """The output projection ``W_O`` of ``layer``: a ``(hidden, heads * head_dim)`` tensor.

        Query head ``q`` owns columns ``q * head_dim : (q + 1) * head_dim``.
        """
        return self.attention[layer].o_proj.weight


def language_model(model):
    base = getattr(model, "model", None)
    if base is None:
        return None
    return getattr(base, "language_model", base)


def model_geometry(model):
    """Layers, heads, KV heads, head dimension and output projections of a causal LM.

    Everything is read from the model and its configuration (``config.get_text_config()``,
    the decoder layers' ``self_attn`` modules), so one code path serves every supported
    family.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal language model whose ``config.model_type`` is one of
        :data:`SUPPORTED_MODEL_TYPES` (the families kvpress supports).

    Returns
    -------
    ModelGeometry

    Raises
    ------
    InvalidTypeError
        ``model`` is not a transformers model.
    InvalidInputError
        An unsupported ``model_type``, or attention modules without the expected layout.

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    >>> g = model_geometry(LlamaForCausalLM(cfg))
    >>> (g.model_type, g.layers, g.heads, g.kv_heads, g.head_dim, g.group)
    ('llama', 2, 4, 2, 8, 2)
    >>> tuple(g.o_proj_weight(0).shape)
    (32, 32)
    """
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or config is None:
        raise InvalidTypeError(f"`model` must be a transformers model; got {type(model).__name__}")
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InvalidInputError(
            f"`model` has model_type {model_type!r}, which is not supported; supported model types: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    _, heads, kv_heads = config_heads(config)
    lm = language_model(model)
    layers = getattr(lm, "layers", None)
    if layers is None or len(layers) == 0:
        raise InvalidInputError(f"`model` ({model_type}) has no decoder layers at model.model.layers")
    attention = tuple(layer.self_attn for layer in layers)
    heads, kv_heads = int(heads), int(kv_heads)
    head_dim = int(attention[0].head_dim)
    if heads % kv_heads:
        raise InvalidInputError(
            f"`model` has {heads} query heads, not a multiple of its {kv_heads} KV heads"
        )
    for index, module in enumerate(attention):
        weight = getattr(getattr(module, "o_proj", None), "weight", None)
        if weight is None or weight.ndim != 2 or weight.shape[1] != heads * head_dim:
            raise InvalidInputError(
                f"`model` layer {index}: self_attn.o_proj must be a linear map from heads * head_dim "
                f"= {heads * head_dim} features; got {None if weight is None else tuple(weight.shape)}"
            )
    return ModelGeometry(model_type, len(attention), heads, kv_heads, head_dim, attention)
