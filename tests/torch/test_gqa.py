"""reduce_gqa against a per-group reference loop."""

import pytest

torch = pytest.importorskip("torch")

from budgetopt.errors import InvalidInputError, InvalidTypeError  # noqa: E402
from budgetopt.torch import keep_mask, reduce_gqa  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("how", ["mean", "max"])
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4), (6, 1)])
def test_matches_reference(ref, dtype, how, heads, kv_heads):
    scores = ref.random_scores((2, heads, 11), dtype, seed=heads + kv_heads)
    got = reduce_gqa(scores, kv_heads, how=how)
    assert got.shape == (2, kv_heads, 11) and got.dtype == dtype
    expected = ref.reduce_gqa(scores, kv_heads, how)
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    if how == "max":
        tol = 0.0  # an exact selection
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_query_heads_group_consecutively():
    # Query heads 0,1 -> KV head 0 and 2,3 -> KV head 1 (Hugging Face's repeat_kv).
    scores = torch.zeros(1, 4, 3)
    scores[0, 1, 2] = 8.0
    scores[0, 2, 0] = 4.0
    assert reduce_gqa(scores, 2).tolist() == [[[0.0, 0.0, 4.0], [2.0, 0.0, 0.0]]]


def test_non_contiguous_scores():
    scores = torch.randn(3, 5, 4).transpose(1, 2)  # (batch=3, heads=4, T=5) strided
    torch.testing.assert_close(reduce_gqa(scores, 2), reduce_gqa(scores.contiguous(), 2))


def test_feeds_keep_mask_per_kv_head():
    scores = torch.randn(2, 8, 30, generator=torch.Generator().manual_seed(0))
    mask = keep_mask(reduce_gqa(scores, 2, how="max"), [5, 9])
    assert mask.shape == (2, 2, 30) and mask.sum(-1).tolist() == [[5, 9], [5, 9]]


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((torch.zeros(1, 6, 3), 4), {}, InvalidInputError, "positive divisor of the 6 query heads"),
        ((torch.zeros(1, 6, 3), 0), {}, InvalidInputError, "`num_kv_heads` must be a positive divisor"),
        ((torch.zeros(1, 6, 3), 2.0), {}, InvalidTypeError, "`num_kv_heads` must be an int"),
        ((torch.zeros(1, 6, 3), True), {}, InvalidTypeError, "`num_kv_heads` must be an int"),
        ((torch.zeros(6, 3), 2), {}, InvalidInputError, r"`scores` must have 3 axes \(batch, heads, T\)"),
        ((torch.zeros(1, 6, 3, dtype=torch.int32), 2), {}, InvalidTypeError, "`scores` must have a floating"),
        ((torch.zeros(1, 6, 3), 2), {"how": "sum"}, InvalidInputError, "`how` must be one of 'mean', 'max'"),
    ],
)
def test_errors_name_the_argument(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        reduce_gqa(*args, **kwargs)
