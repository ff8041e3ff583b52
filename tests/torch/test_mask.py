"""keep_mask against a per-head reference loop, plus argument checks."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from budgetopt.errors import InvalidInputError, InvalidTypeError  # noqa: E402
from budgetopt.torch import keep_mask  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sink,window", [(0, 0), (2, 0), (0, 3), (2, 3), (20, 20)])
@pytest.mark.parametrize("tied", [False, True])
def test_matches_reference(ref, dtype, sink, window, tied):
    batch, heads, length = 3, 4, 23
    make = ref.tied_scores if tied else ref.random_scores
    scores = make((batch, heads, length), dtype, seed=7 + sink + 10 * window)
    # 0, below the protected count, typical, exactly T, above T, negative (clamped to 0).
    budgets = np.array([[0, 1, 9, 23], [4, 40, 12, -3], [23, 6, 2, 17]])
    got = keep_mask(scores, budgets, sink=sink, window=window)
    assert got.dtype == torch.bool and got.shape == scores.shape
    np.testing.assert_array_equal(got.numpy(), ref.keep_mask(scores, budgets, sink, window))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_counts_are_exact_unless_protected_tokens_exceed_budget(dtype):
    batch, heads, length, sink, window = 2, 5, 50, 4, 2
    scores = torch.randn(batch, heads, length, generator=torch.Generator().manual_seed(1)).to(dtype)
    budgets = np.array([0, 3, 6, 31, 50])
    counts = keep_mask(scores, budgets, sink=sink, window=window).sum(-1)
    expected = np.maximum(budgets, sink + window)
    np.testing.assert_array_equal(counts.numpy(), np.broadcast_to(expected, (batch, heads)))


def test_shared_budgets_apply_to_every_batch_row(ref):
    scores = ref.random_scores((4, 3, 17), torch.float32, seed=3)
    budgets = [5, 0, 17]
    got = keep_mask(scores, budgets, sink=1, window=1)
    np.testing.assert_array_equal(got.numpy(), ref.keep_mask(scores, [budgets] * 4, 1, 1))


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor", "int32 tensor", "uint8 numpy"])
def test_budget_containers_agree(ref, kind):
    scores = ref.tied_scores((2, 3, 12), torch.float32, seed=5)
    budgets = [[1, 6, 12], [0, 3, 9]]
    container = {
        "list": budgets,
        "numpy": np.array(budgets),
        "tensor": torch.tensor(budgets),
        "int32 tensor": torch.tensor(budgets, dtype=torch.int32),
        "uint8 numpy": np.array(budgets, dtype=np.uint8),
    }[kind]
    got = keep_mask(scores, container, sink=1)
    np.testing.assert_array_equal(got.numpy(), ref.keep_mask(scores, budgets, 1, 0))


def test_ties_go_to_lower_positions():
    scores = torch.zeros(1, 1, 6)
    assert keep_mask(scores, [3]).tolist() == [[[True, True, True, False, False, False]]]
    # Protected tokens are removed from the contest; ties in the middle still go low.
    assert keep_mask(scores, [3], sink=1, window=1).tolist() == [[[True, True, False, False, False, True]]]


def test_nan_scores_rank_last():
    scores = torch.tensor([[[float("nan"), 1.0, float("-inf"), 0.0, float("nan")]]])
    assert keep_mask(scores, [2]).tolist() == [[[False, True, False, True, False]]]
    # NaN ties with -inf; the lower position wins.
    assert keep_mask(scores, [3]).tolist() == [[[True, True, False, True, False]]]


def test_signed_zeros_tie():
    scores = torch.tensor([[[-0.0, 0.0, -0.0, 0.0, -1.0]]])
    assert keep_mask(scores, [3]).tolist() == [[[True, True, True, False, False]]]
    assert keep_mask(-scores, [2], sink=1).tolist() == [[[True, False, False, False, True]]]
    assert keep_mask(-scores, [3], sink=1).tolist() == [[[True, True, False, False, True]]]


@pytest.mark.parametrize("length", [0, 1])
def test_degenerate_lengths(length):
    scores = torch.randn(2, 3, length)
    got = keep_mask(scores, [0, 1, 5], sink=1, window=1)
    assert got.shape == (2, 3, length)
    assert got.all()  # every token of a 0- or 1-token head is protected (or there is none)


def test_sequence_of_only_protected_tokens_is_kept_whole():
    scores = torch.randn(1, 2, 5)
    assert keep_mask(scores, [0, 2], sink=3, window=3).all()


def test_does_not_modify_scores():
    scores = torch.tensor([[[float("nan"), 1.0, 2.0]]])
    before = scores.clone()
    keep_mask(scores, [1], sink=1)
    assert torch.equal(scores.isnan(), before.isnan()) and scores[0, 0, 1:].equal(before[0, 0, 1:])


def test_float64_scores_work(ref):
    scores = ref.random_scores((1, 2, 9), torch.float64, seed=2)
    np.testing.assert_array_equal(keep_mask(scores, [4, 7]).numpy(), ref.keep_mask(scores, [4, 7]))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(scores=np.zeros((1, 2, 3))), InvalidTypeError, "`scores` must be a torch.Tensor"),
        (dict(scores=torch.zeros(2, 3)), InvalidInputError, "`scores` must have 3 axes"),
        (dict(scores=torch.zeros(1, 2, 3, dtype=torch.int64)), InvalidTypeError, "`scores` must have a floating"),
        (dict(budgets=[1.0, 2.0]), InvalidTypeError, "`budgets` must hold whole token counts"),
        (dict(budgets=torch.tensor([1.0, 2.0])), InvalidTypeError, "`budgets` must hold whole"),
        (dict(budgets=torch.tensor([True, False])), InvalidTypeError, "`budgets` must hold whole"),
        (dict(budgets=[1, 2, 3]), InvalidInputError, r"`budgets` must have shape \(kv_heads,\)"),
        (dict(budgets=[[1, 2]] * 3), InvalidInputError, r"`budgets` must have shape"),
        (dict(budgets=5), InvalidInputError, r"`budgets` must have shape"),
        (dict(budgets=torch.tensor([[1, 2, 3]])), InvalidInputError, r"got \(1, 3\)"),
        (dict(sink=-1), InvalidInputError, "`sink` must be >= 0"),
        (dict(window=-2), InvalidInputError, "`window` must be >= 0"),
        (dict(window=1.5), InvalidTypeError, "`window` must be an int"),
        (dict(sink=True), InvalidTypeError, "`sink` must be an int"),
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    args = dict(scores=torch.zeros(1, 2, 3), budgets=[1, 2])
    args.update(kwargs)
    scores, budgets = args.pop("scores"), args.pop("budgets")
    with pytest.raises(error, match=match):
        keep_mask(scores, budgets, **args)
