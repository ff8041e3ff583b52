"""Every press mode inside kvpress's ``KVPressTextGenerationPipeline``, several questions per context.

The pipeline pre-fills the context inside ``with press(model):``, then, after the block, feeds
each question at once (several new tokens on the compressed cache, with explicit
``position_ids`` and a causal mask that transformers sizes by the first layer's cache) and
removes each answer before the next question.

The reference shares no code with the presses: the context is pre-filled uncompressed, each
head's kept tokens are chosen by the conftest's per-head loop (``ref.keep_mask``) from the
scorer's rule (``KnormPress``: minus the key norm), and each question is decoded greedily over
the full cache with an explicit per-head 4D attention mask that hides the evicted tokens.
The kept counts are read from the cache the pipeline filled.
"""

import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("kvpress")
pytest.importorskip("tokenizers")

from kvpress import KnormPress  # noqa: E402
from transformers import DynamicCache, pipeline  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt.errors import InvalidInputError  # noqa: E402
from budgetopt.torch import RequestBudgetPress  # noqa: E402
from budgetopt.torch.press import BudgetPress  # noqa: E402
from budgetopt.torch.varlen_cache import fit_mask_to_layer  # noqa: E402

LENGTH = 40                                       # context tokens: <s> and 39 words
CAPACITY = 20                                     # the budgets' grid: scaled x2 to the context
BUDGETS = np.array([[5, 12], [0, 20], [1, 9]])    # layers of different largest budgets
SINK, WINDOW = 2, 1
NEW_TOKENS = 12
EOS = 3


def _presses(mode):
    if mode == "request":
        rng = np.random.default_rng(1)
        calib = [rng.gamma(0.4, size=(3, 2, LENGTH)) for _ in range(3)]
        ra = budgetopt.RequestAllocator.fit(calib, [np.log(o) for o in calib], sink=SINK, window=WINDOW)
        return RequestBudgetPress(KnormPress(), ra, compression_ratio=0.6)
    return BudgetPress(KnormPress(), BUDGETS, head_capacity=CAPACITY, sink=SINK, window=WINDOW, mode=mode)


def _reference_budgets(press, layer, scores):
    """Per-head budgets of ``layer`` for this context, from the press's public rule."""
    if isinstance(press, RequestBudgetPress):
        ra = press.allocator
        total = press.total_budget(LENGTH)
        return ra.allocate_layer(layer, scores[0].numpy(), int(ra.layer_totals(LENGTH, total)[layer]))
    return press.layer_budgets(layer, LENGTH)


def _reference_answers(model, tokenizer, context_ids, questions, press, ref):
    """Greedy answers over the uncompressed cache with evicted tokens masked per head."""
    cache = DynamicCache()
    with torch.no_grad():
        model.model(input_ids=context_ids, past_key_values=cache)
    kept = []  # per layer: (kv_heads, T) bool
    for layer in range(len(cache.layers)):
        scores = -cache.layers[layer].keys.float().norm(dim=-1)   # KnormPress's score
        kept.append(torch.from_numpy(ref.keep_mask(scores, _reference_budgets(press, layer, scores),
                                                   SINK, WINDOW))[0])
    groups = model.config.num_attention_heads // model.config.num_key_value_heads
    answers = []
    for question in questions:
        ids = tokenizer.encode(question + "\n", return_tensors="pt", add_special_tokens=False)
        seen, out = LENGTH, []
        for _ in range(NEW_TOKENS):
            q = ids.shape[1]
            mask = torch.ones(1, model.config.num_attention_heads, q, seen + q, dtype=torch.bool)
            # The kept set of layer 0 would do for one layer only; the heads differ per layer, so the
            # model is run layer by layer below through per-layer masks.
            masks = []
            for layer_kept in kept:
                m = mask.clone()
                m[0, :, :, :LENGTH] = layer_kept.repeat_interleave(groups, 0)[:, None, :]
                m[0, :, :, seen:] = torch.ones(q, q, dtype=torch.bool).tril()
                masks.append(m)
            logits = _forward_with_layer_masks(model, ids, cache, seen, masks)
            token = int(logits[0, -1].argmax())
            out.append(token)
            seen += q
            ids = torch.tensor([[token]])
            if token == EOS:
                break
        cache.crop(LENGTH)
        answers.append(tokenizer.decode(out, skip_special_tokens=True))
    return answers, kept


def _forward_with_layer_masks(model, ids, cache, seen, masks):
    """One forward with its own 4D mask in every decoder layer (a pre-hook swaps it in)."""
    handles = []
    for layer, m in zip(model.model.layers, masks):
        def hook(module, args, kwargs, m=m):
            kwargs["attention_mask"] = m
            return args, kwargs
        handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            positions = torch.arange(seen, seen + ids.shape[1]).unsqueeze(0)
            return model(input_ids=ids, past_key_values=cache, position_ids=positions).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch", ["Llama", "Qwen2"])
@pytest.mark.parametrize("mode", ["mask", "gather", "varlen", "request"])
def test_every_mode_answers_in_the_pipeline_like_an_explicit_mask_reference(arch, mode, lm_kit, ref):
    model, tokenizer = lm_kit.model(arch), lm_kit.tokenizer()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    rng = np.random.default_rng(0)
    context = " ".join(rng.choice(lm_kit.words, LENGTH - 1))
    questions = [" ".join(rng.choice(lm_kit.words, n)) for n in (3, 5, 1, 4)]
    context_ids = tokenizer.encode("<s>" + context, return_tensors="pt", add_special_tokens=False)
    assert context_ids.shape[1] == LENGTH

    press = _presses(mode)
    cache = DynamicCache()
    with torch.no_grad():
        got = pipe(context, questions=questions, press=press, max_new_tokens=NEW_TOKENS, cache=cache)["answers"]
    counts = lm_kit.held(model, cache, mode)   # before the reference's pre-filling resets kvpress's masks
    want, kept = _reference_answers(model, tokenizer, context_ids, questions, press, ref)
    assert got == want
    assert sum(len(a.split()) for a in got) > 2 * len(questions)   # real answers, not all cut at once

    # What the cache holds once the answers are removed.
    expected = np.array([k.sum(-1).tolist() for k in kept])
    np.testing.assert_array_equal(counts, expected)
    if mode == "gather":  # each layer cut to its own largest head: the layers differ in length
        lengths = [layer.keys.shape[2] for layer in cache.layers]
        assert lengths == expected.max(axis=1).tolist() and len(set(lengths)) > 1
    if mode in ("gather", "varlen"):
        assert cache.get_seq_length() == (LENGTH if mode == "varlen" else lengths[0])
    del cache
    gc.collect()
    assert model.config._attn_implementation == "sdpa"   # the press's attention is given back

    if mode == "mask" and arch == "Llama":
        plain = pipe(context, questions=questions, max_new_tokens=NEW_TOKENS)["answers"]
        assert plain != got  # the budgets change the answers: the comparison has teeth


def test_gather_mode_keeps_the_model_on_its_attention_only_while_needed(lm_kit):
    model = lm_kit.model("Llama")
    press = _presses("gather")
    ids = torch.randint(4, 128, (1, LENGTH), generator=torch.Generator().manual_seed(3))
    cache = DynamicCache()
    with torch.no_grad(), press(model):
        model.model(input_ids=ids, past_key_values=cache)
    assert model.config._attn_implementation == "budgetopt_varlen"
    # Decoding a question after the block: several new tokens over layers of different lengths.
    q = torch.randint(4, 128, (1, 3), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model(input_ids=q, past_key_values=cache, position_ids=torch.arange(LENGTH, LENGTH + 3)[None])
    del cache
    gc.collect()
    assert model.config._attn_implementation == "sdpa"


def test_fit_mask_to_layer_widens_narrows_and_refuses_padding():
    causal = torch.ones(2, 6, dtype=torch.bool).tril(4).view(1, 1, 2, 6)   # 4 past rows, 2 new tokens
    wide = fit_mask_to_layer(causal, 9)
    assert wide.shape == (1, 1, 2, 9) and wide[..., :7].all() and not wide[0, 0, 0, 8]
    narrow = fit_mask_to_layer(causal, 3)
    assert narrow[0, 0].tolist() == [[True, True, False], [True, True, True]]
    additive = torch.zeros(1, 1, 2, 6).masked_fill(~causal, float("-inf"))
    assert torch.equal(fit_mask_to_layer(additive, 9) == 0, wide)
    empty_past = torch.ones(2, 2, dtype=torch.bool).tril().view(1, 1, 2, 2)
    assert fit_mask_to_layer(empty_past, 5)[0, 0].tolist() == [[True] * 4 + [False], [True] * 5]
    padded = causal.clone()
    padded[..., 0] = False                           # a left-padded row: part of the past hidden
    with pytest.raises(InvalidInputError, match="a padding mask cannot be applied"):
        fit_mask_to_layer(padded, 9)
    with pytest.raises(InvalidInputError, match="the cache layer holds 1"):
        fit_mask_to_layer(causal, 1)


def test_gather_mode_refuses_a_padded_batch_that_varlen_and_mask_answer_alike(lm_kit):
    model = lm_kit.model("Llama")
    ids = torch.randint(4, 128, (2, LENGTH), generator=torch.Generator().manual_seed(5))
    padded = torch.ones_like(ids)
    padded[1, :6] = 0
    ids[1, :6] = 0
    out = {}
    for mode in ("mask", "gather", "varlen"):
        for name, mask in (("full", torch.ones_like(ids)), ("padded", padded)):
            with torch.no_grad(), _presses(mode)(model):
                if mode == "gather" and name == "padded":  # its rows keep no positions for the mask
                    with pytest.raises(InvalidInputError, match=r"cannot compress a padded batch"):
                        model.generate(ids, attention_mask=mask, max_new_tokens=2, pad_token_id=0)
                    continue
                out[mode, name] = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                                 pad_token_id=0, suppress_tokens=[0])[:, LENGTH:].tolist()
    assert out["gather", "full"] == out["mask", "full"] == out["varlen", "full"]
    assert out["mask", "padded"] == out["varlen", "padded"] and out["mask", "padded"] != out["mask", "full"]
