"""BudgetPress(mode="varlen") in kvpress's pipeline, after its ``with`` block, and on Gemma3.

kvpress's pipeline pre-fills inside ``with press(model):``, decodes every question after
the block, and removes each answer with ``layer.keys = layer.keys[:, :, :n]``. The
reference is the same pipeline in ``mode="mask"`` with the same budgets. Tiny random
models and a word-level tokenizer built here (no download).
"""

import gc
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("kvpress")
tokenizers = pytest.importorskip("tokenizers")

from kvpress import KnormPress  # noqa: E402
from transformers import DynamicCache, pipeline  # noqa: E402

from budgetopt.errors import InvalidInputError  # noqa: E402
from budgetopt.torch.press import BudgetPress  # noqa: E402
from budgetopt.torch.varlen_cache import ATTENTION_NAME, VarlenCache, VarlenLayer  # noqa: E402

VOCAB = 128
LENGTH = 40  # context tokens: <s> and 39 words
BUDGETS = np.array([[10, 25], [0, 40], [1, 18]])
SINK, WINDOW = 2, 1


def _press(mode, budgets=BUDGETS, capacity=LENGTH):
    return BudgetPress(KnormPress(), budgets, head_capacity=capacity, sink=SINK, window=WINDOW, mode=mode)


@pytest.mark.parametrize("arch", ["Llama", "Qwen2"])
def test_pipeline_answers_like_mask_mode_several_questions(arch, lm_kit):
    model, rng = lm_kit.model(arch), np.random.default_rng(0)
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=lm_kit.tokenizer(), device="cpu")
    context = " ".join(rng.choice(lm_kit.words, LENGTH - 1))
    questions = [" ".join(rng.choice(lm_kit.words, n)) for n in (3, 5, 1)]
    answers = {}
    for mode in ("mask", "varlen"):
        answers[mode] = pipe(context, questions=questions, press=_press(mode), max_new_tokens=24)["answers"]
    assert answers["varlen"] == answers["mask"]
    assert all(len(a.split()) == 24 for a in answers["varlen"])  # no early stop: every step compared
    # Each answer was removed before the next question: asked alone, a question gets the same answer.
    alone = pipe(context, question=questions[2], press=_press("varlen"), max_new_tokens=24)["answer"]
    assert alone == answers["varlen"][2]
    # The pipeline's cache is gone, so the model is back on sdpa.
    gc.collect()
    assert model.config._attn_implementation == "sdpa"
    if arch == "Llama":
        plain = pipe(context, questions=questions, max_new_tokens=24)["answers"]
        assert plain != answers["mask"]  # the budgets changed the answers: the comparison has teeth


def test_attention_held_while_a_varlen_cache_lives(lm_kit):
    model = lm_kit.model("Llama")
    ids = torch.randint(1, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(1))
    cache = DynamicCache()
    with torch.no_grad(), _press("varlen")(model):
        model.model(input_ids=ids, past_key_values=cache)
    assert type(cache) is VarlenCache and model.config._attn_implementation == ATTENTION_NAME
    # Decoding after the block (explicit positions, as the pipeline does) matches decoding inside it.
    step = dict(input_ids=ids[:, -1:], past_key_values=cache, position_ids=torch.tensor([[LENGTH]]))
    with torch.no_grad():
        after = model(**step).logits
    cache.crop(LENGTH)
    with torch.no_grad(), _press("varlen")(model):
        inside = model(**step).logits
    torch.testing.assert_close(after, inside, rtol=0, atol=0)
    # A user who switches the attention away is refused instead of attending wrongly ...
    model.set_attn_implementation("sdpa")
    with torch.no_grad(), pytest.raises(InvalidInputError, match="only the 'budgetopt_varlen' attention reads"):
        model(**step)
    # ... and freeing the cache then leaves that choice alone.
    model.set_attn_implementation(ATTENTION_NAME)
    cache.crop(LENGTH)
    del cache
    gc.collect()
    assert model.config._attn_implementation == ATTENTION_NAME
    model.set_attn_implementation("sdpa")
    # Several caches: the attention comes back once the last one is freed.
    caches = [DynamicCache(), DynamicCache()]
    with torch.no_grad(), _press("varlen")(model):
        for c in caches:
            model.model(input_ids=ids, past_key_values=c)
    del c
    caches.pop()
    gc.collect()
    assert model.config._attn_implementation == ATTENTION_NAME
    caches.pop()
    gc.collect()
    assert model.config._attn_implementation == "sdpa"


def test_dense_layer_slicing_crops_the_decoded_tail():
    keys = torch.randn(2, 2, 6, 4, generator=torch.Generator().manual_seed(0))
    from budgetopt.torch import compact

    layer = VarlenLayer.from_varlen(compact(keys, -keys, keys[..., 0], [2, 5]).to_varlen(), 6)
    other = VarlenLayer.from_varlen(compact(keys, -keys, keys[..., 0], [1, 1]).to_varlen(), 6)
    packed = layer.keys.clone()
    new = torch.randn(2, 2, 3, 4)
    layer.update(new, -new)
    assert torch.equal(layer.keys, packed) and type(layer.keys[1:3]) is torch.Tensor
    assert torch.equal(layer.keys[1:3], packed[1:3]) and layer.keys.shape == (14, 4)
    layer.keys = layer.keys[:, :, :7]           # the idiom kvpress's pipeline uses
    assert layer.decoded_keys.shape[2] == 1 and layer.decoded_values.shape[2] == 3
    layer.values = layer.values[:, :, :7]
    assert layer.get_seq_length() == 7 and torch.equal(layer.decoded_values, -new[:, :, :1])
    assert torch.equal(layer.keys, packed)      # the packed context is untouched
    layer.keys = layer.keys[:, :, :100]         # longer than seen: nothing to drop
    assert layer.get_seq_length() == 7
    with pytest.raises(InvalidInputError, match="cannot crop a compressed cache below its context of 6"):
        layer.keys = layer.keys[:, :, :5]
    with pytest.raises(InvalidInputError, match="`values` can be assigned `layer.values\\[:, :, :n\\]` of this"):
        layer.values = other.values[:, :, :6]
    with pytest.raises(InvalidInputError, match="`keys` can be assigned"):
        layer.keys = layer.values[:, :, :6]


# -- Gemma3: sliding-window layers keep their window, full layers their budgets ----------------
def _gemma3():
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"] * 2, attn_implementation="sdpa", pad_token_id=0)
    return transformers.Gemma3ForCausalLM(config).eval()


def test_gemma3_all_modes_decode_alike_and_sliding_layers_keep_their_window():
    model = _gemma3()
    budgets = np.array([[10, 25], [0, 40], [1, 18], [30, 2]])
    ids = torch.randint(1, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    out = {}
    for mode in ("mask", "gather", "varlen", None):
        press = _press(mode, budgets) if mode else None
        with torch.no_grad(), (press(model) if press else _nothing()):
            out[mode] = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32,
                                       return_dict_in_generate=True, output_logits=True, suppress_tokens=[0],
                                       pad_token_id=0)
    for mode in ("gather", "varlen"):
        assert torch.equal(out[mode].sequences, out["mask"].sequences)
        for a, b in zip(out[mode].logits, out["mask"].logits):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.equal(out[None].sequences, out["mask"].sequences)
    layers = out["varlen"].past_key_values.layers
    assert [type(layer).__name__ for layer in layers] == ["DynamicSlidingWindowLayer", "VarlenLayer"] * 2
    counts = np.maximum(budgets, SINK + WINDOW)
    for index in (1, 3):
        assert layers[index].keys.shape[0] == 2 * counts[index].sum()
    for index in (0, 2):  # the window only, as without a press
        assert layers[index].keys.shape == out[None].past_key_values.layers[index].keys.shape


def test_nested_configs_read_the_text_config():
    text = transformers.Gemma3TextConfig(num_hidden_layers=4, num_key_value_heads=2, num_attention_heads=4,
                                         head_dim=16, hidden_size=64)
    config = transformers.Gemma3Config(text_config=text.to_dict())
    press = _press("mask", np.ones((4, 2), dtype=int), 4)
    press.post_init_from_model(SimpleNamespace(config=config))
    with pytest.raises(InvalidInputError, match=r"\(layers, kv_heads\) = \(3, 2\) but the model has \(4, 2\)"):
        _press("mask").post_init_from_model(SimpleNamespace(config=config))


def _nothing():
    import contextlib

    return contextlib.nullcontext()
