"""compact / CompactKV / to_varlen against per-head reference gathers, and the attention
check: attention over the compacted cache equals attention over the full cache with the
evicted keys masked."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from budgetopt.errors import InvalidInputError, InvalidTypeError  # noqa: E402
from budgetopt.torch import compact, keep_mask  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _kv(batch, heads, length, dim, dtype, seed, value_dim=None):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(batch, heads, length, dim, generator=gen).to(dtype)
    values = torch.randn(batch, heads, length, value_dim or dim, generator=gen).to(dtype)
    return keys, values


def _check_against_reference(ref, kv, keys, values, scores, budgets, sink, window):
    expected = ref.compact(keys, values, scores, budgets, sink, window)
    batch, heads, length = scores.shape
    lengths = np.array([[len(expected[b, h][0]) for h in range(heads)] for b in range(batch)])
    slots = int(lengths.max()) if lengths.size else 0
    assert kv.keys.shape == (batch, heads, slots, keys.shape[-1])
    assert kv.values.shape == (batch, heads, slots, values.shape[-1])
    assert kv.keys.dtype == keys.dtype and kv.values.dtype == values.dtype
    assert kv.positions.dtype == torch.int64 and kv.lengths.dtype == torch.int64
    np.testing.assert_array_equal(kv.lengths.numpy(), lengths)
    assert kv.total == int(lengths.sum()) and kv.seq_len == length and kv.max_length == slots
    for (b, h), (pos, k_rows, v_rows) in expected.items():
        n = len(pos)
        assert kv.positions[b, h, :n].tolist() == pos
        assert (kv.positions[b, h, n:] == -1).all()
        assert kv.valid[b, h].tolist() == [True] * n + [False] * (slots - n)
        # Bit for bit: compare the raw bytes, not float values.
        assert torch.equal(kv.keys[b, h, :n].view(torch.uint8), k_rows.contiguous().view(torch.uint8))
        assert torch.equal(kv.values[b, h, :n].view(torch.uint8), v_rows.contiguous().view(torch.uint8))
        assert (kv.keys[b, h, n:] == 0).all() and (kv.values[b, h, n:] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sink,window", [(0, 0), (3, 2)])
@pytest.mark.parametrize("tied", [False, True])
def test_matches_reference(ref, dtype, sink, window, tied):
    batch, heads, length, dim = 2, 3, 29, 8
    keys, values = _kv(batch, heads, length, dim, dtype, seed=11, value_dim=4)
    make = ref.tied_scores if tied else ref.random_scores
    scores = make((batch, heads, length), torch.float32 if tied else dtype, seed=4)
    budgets = np.array([[0, 7, 29], [100, 2, 13]])
    kv = compact(keys, values, scores, budgets, sink=sink, window=window)
    _check_against_reference(ref, kv, keys, values, scores, budgets, sink, window)


@pytest.mark.parametrize(
    "dtype,dim",
    [(torch.float32, 1), (torch.bfloat16, 3), (torch.float16, 2), (torch.float64, 5), (torch.float16, 0)],
    ids=["f32-d1", "bf16-d3", "f16-d2", "f64-d5", "f16-d0"],
)
def test_row_sizes_without_wide_words(ref, dtype, dim):
    keys, values = _kv(2, 2, 10, dim, dtype, seed=2)
    scores = ref.random_scores((2, 2, 10), torch.float32, seed=8)
    kv = compact(keys, values, scores, [3, 6], sink=1)
    _check_against_reference(ref, kv, keys, values, scores, [[3, 6]] * 2, 1, 0)


def test_non_contiguous_inputs_give_the_same_result(ref):
    # Hugging Face builds keys as (batch, T, heads, dim) and transposes them.
    gen = torch.Generator().manual_seed(0)
    base_k = torch.randn(2, 15, 3, 8, generator=gen).to(torch.bfloat16)
    base_v = torch.randn(2, 15, 3, 8, generator=gen).to(torch.bfloat16)
    keys, values = base_k.transpose(1, 2), base_v.transpose(1, 2)
    assert not keys.is_contiguous()
    scores = ref.random_scores((2, 3, 15), torch.float32, seed=1)
    strided = compact(keys, values, scores, [4, 9, 1], window=2)
    dense = compact(keys.contiguous(), values.contiguous(), scores, [4, 9, 1], window=2)
    _check_against_reference(ref, strided, keys, values, scores, [[4, 9, 1]] * 2, 0, 2)
    for name in ("keys", "values", "positions", "lengths", "valid"):
        assert torch.equal(getattr(strided, name), getattr(dense, name)), name


def test_storage_offset_view_still_copies_right(ref):
    # A slice whose storage offset is not a multiple of 8 bytes cannot be viewed as int64.
    keys, values = _kv(1, 2, 9, 8, torch.float16, seed=5)
    big_k = torch.cat([torch.zeros(1), keys.flatten()]).to(torch.float16)[1:].view(1, 2, 9, 8)
    assert big_k.storage_offset() == 1
    scores = ref.random_scores((1, 2, 9), torch.float32, seed=6)
    kv = compact(big_k, values, scores, [2, 5])
    _check_against_reference(ref, kv, big_k, values, scores, [[2, 5]], 0, 0)


def test_mask_and_compact_agree_on_the_kept_set(ref):
    keys, values = _kv(3, 4, 40, 16, torch.bfloat16, seed=3)
    scores = ref.tied_scores((3, 4, 40), torch.bfloat16, seed=9, levels=3)
    budgets = torch.tensor([[3, 10, 0, 40], [8, 8, 8, 8], [1, 2, 3, 4]])
    mask = keep_mask(scores, budgets, sink=2, window=1)
    kv = compact(keys, values, scores, budgets, sink=2, window=1)
    rebuilt = torch.zeros_like(mask)
    b, h, _ = torch.where(kv.valid)
    rebuilt[b, h, kv.positions[kv.valid]] = True
    assert torch.equal(rebuilt, mask)


def test_tensor_and_host_budgets_agree(ref):
    keys, values = _kv(2, 3, 20, 4, torch.float32, seed=0)
    scores = ref.random_scores((2, 3, 20), torch.float32, seed=0)
    host = compact(keys, values, scores, np.array([5, 12, 0]), sink=1)
    device = compact(keys, values, scores, torch.tensor([5, 12, 0]), sink=1)
    for name in ("keys", "values", "positions", "lengths", "valid"):
        assert torch.equal(getattr(host, name), getattr(device, name)), name
    assert host.total == device.total == 2 * (5 + 12 + 1)


@pytest.mark.parametrize("budget", [0, 20, 10**6])
def test_zero_and_full_budgets(budget):
    keys, values = _kv(2, 2, 20, 4, torch.float16, seed=1)
    scores = torch.randn(2, 2, 20)
    kv = compact(keys, values, scores, [budget, budget])
    if budget == 0:
        assert kv.keys.shape == (2, 2, 0, 4) and kv.total == 0
        packed = kv.to_varlen()
        assert packed.keys.shape == (0, 4) and packed.cu_seqlens.tolist() == [0] * 5
    else:
        assert torch.equal(kv.keys, keys) and torch.equal(kv.values, values)
        assert kv.positions.tolist() == [[list(range(20))] * 2] * 2


@pytest.mark.parametrize("length", [5, 6, 9])
def test_budgets_within_protected_tokens(ref, length):
    # No head keeps an unprotected token (5, 6: every token is protected).
    keys, values = _kv(2, 3, length, 4, torch.float32, seed=length)
    scores = ref.random_scores((2, 3, length), torch.float32, seed=length)
    kv = compact(keys, values, scores, [0, 2, 6], sink=2, window=4)
    _check_against_reference(ref, kv, keys, values, scores, [[0, 2, 6]] * 2, 2, 4)


def test_empty_sequence():
    kv = compact(torch.zeros(1, 2, 0, 4), torch.zeros(1, 2, 0, 4), torch.zeros(1, 2, 0), [3, 0], sink=2)
    assert kv.keys.shape == (1, 2, 0, 4) and kv.total == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_to_varlen_layout(ref, dtype):
    batch, heads, length = 2, 3, 18
    keys, values = _kv(batch, heads, length, 8, dtype, seed=12, value_dim=6)
    scores = ref.random_scores((batch, heads, length), dtype, seed=12)
    budgets = np.array([[4, 0, 18], [7, 1, 9]])
    packed = compact(keys, values, scores, budgets, sink=1, window=1).to_varlen()
    expected = ref.compact(keys, values, scores, budgets, 1, 1)
    order = [(b, h) for b in range(batch) for h in range(heads)]  # batch-major, then head
    lengths = [len(expected[i][0]) for i in order]
    assert packed.cu_seqlens.dtype == torch.int32
    assert packed.cu_seqlens.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert packed.max_seqlen == max(lengths) and (packed.batch, packed.kv_heads) == (batch, heads)
    assert packed.positions.tolist() == [p for i in order for p in expected[i][0]]
    assert torch.equal(packed.keys, torch.cat([expected[i][1] for i in order]))
    assert torch.equal(packed.values, torch.cat([expected[i][2] for i in order]))


def test_attention_bias():
    keys = torch.randn(1, 2, 5, 4)
    kv = compact(keys, keys, torch.randn(1, 2, 5), [3, 1])
    bias = kv.attention_bias()
    assert bias.shape == (1, 2, 1, 3) and bias.dtype == torch.float32
    assert bias[0, :, 0].tolist() == [[0.0, 0.0, 0.0], [0.0, float("-inf"), float("-inf")]]
    assert kv.attention_bias(torch.float16).dtype == torch.float16


def _attention(query, keys, values, bias):
    """Softmax attention in float64; query (B, Hq, Q, D), keys (B, Hkv, S, D), bias
    (B, Hkv, 1, S); query heads g*G..(g+1)*G-1 share KV head g."""
    group = query.shape[1] // keys.shape[1]
    keys = keys.double().repeat_interleave(group, dim=1)
    values = values.double().repeat_interleave(group, dim=1)
    bias = bias.double().repeat_interleave(group, dim=1)
    logits = query.double() @ keys.transpose(-1, -2) / keys.shape[-1] ** 0.5 + bias
    return torch.softmax(logits, dim=-1) @ values


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_over_compact_equals_masked_full_attention(ref, dtype):
    batch, kv_heads, group, length, dim, queries = 2, 2, 3, 64, 16, 4
    keys, values = _kv(batch, kv_heads, length, dim, dtype, seed=21)
    query = torch.randn(batch, kv_heads * group, queries, dim, generator=torch.Generator().manual_seed(5))
    scores = ref.random_scores((batch, kv_heads, length), torch.float32, seed=21)
    budgets = np.array([[9, 30], [1, 64]])
    mask = keep_mask(scores, budgets, sink=2, window=3)
    full_bias = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf")).unsqueeze(2)
    full = _attention(query, keys, values, full_bias)
    kv = compact(keys, values, scores, budgets, sink=2, window=3)
    small = _attention(query, kv.keys, kv.values, kv.attention_bias(torch.float64))
    torch.testing.assert_close(small, full, rtol=1e-12, atol=1e-12)
    # And with torch's own fused attention in the cache's dtype, against the same reference.
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        query.to(dtype),
        kv.keys.repeat_interleave(group, dim=1),
        kv.values.repeat_interleave(group, dim=1),
        attn_mask=kv.attention_bias().repeat_interleave(group, dim=1),
    )
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(sdpa.double(), full, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(keys=torch.zeros(1, 2, 5)), InvalidInputError, "`keys` must have 4 axes"),
        (dict(keys=torch.zeros(1, 2, 6, 4)), InvalidInputError, "`keys` must have shape .* matching `scores`"),
        (dict(values=torch.zeros(1, 3, 5, 4)), InvalidInputError, "`values` must match `keys`"),
        (dict(values=torch.zeros(1, 2, 5, 4, dtype=torch.int32)), InvalidTypeError, "`values` must have a floating"),
        (dict(keys=[[1.0]]), InvalidTypeError, "`keys` must be a torch.Tensor"),
        (dict(scores=torch.zeros(1, 2, 5, 1)), InvalidInputError, "`scores` must have 3 axes"),
        (dict(budgets=[1.5, 2]), InvalidTypeError, "`budgets` must hold whole"),
        (dict(keys=torch.zeros(1, 2, 5, 4, device="meta")), InvalidInputError, "one device"),
        (dict(window=-1), InvalidInputError, "`window` must be >= 0"),
    ],
)
def test_errors_name_the_argument(change, error, match):
    args = dict(keys=torch.zeros(1, 2, 5, 4), values=torch.zeros(1, 2, 5, 4), scores=torch.zeros(1, 2, 5),
                budgets=[1, 2], window=0)
    args.update(change)
    with pytest.raises(error, match=match):
        compact(args["keys"], args["values"], args["scores"], args["budgets"], window=args["window"])
