import math

import pytest
import torch

from hyperprune.masks import (
    count_nm_violations,
    nm_mask_from_scores,
    nm_patterns,
    pack_mask,
    unpack_mask,
    unstructured_mask_from_scores,
)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8), (1, 2)])
def test_nm_patterns_are_all_distinct_n_hot_vectors(n, m):
    patterns = nm_patterns(n, m)
    assert patterns.shape == (math.comb(m, n), m)
    assert torch.all(patterns.sum(dim=1) == n)
    assert len({tuple(row.tolist()) for row in patterns}) == math.comb(m, n)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8), (8, 32)])
def test_nm_mask_keeps_exactly_the_top_n_per_group(n, m):
    torch.manual_seed(0)
    scores = torch.randn(16, 4 * m)
    mask = nm_mask_from_scores(scores, n, m)
    groups, kept = scores.reshape(-1, m), mask.reshape(-1, m)
    assert torch.all(kept.sum(dim=1) == n)
    # Every kept score is at least every pruned score in its group.
    worst_kept = torch.where(kept, groups, torch.inf).min(dim=1).values
    best_pruned = torch.where(~kept, groups, -torch.inf).max(dim=1).values
    assert torch.all(worst_kept >= best_pruned)
    assert count_nm_violations(scores * mask, n, m) == 0


def test_nm_mask_breaks_ties_toward_lower_columns():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5, 2.0, 2.0, 0.5]])
    mask = nm_mask_from_scores(scores, 2, 4)
    assert mask.tolist() == [[True, True, False, False, False, True, True, False]]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (4, 8), (5, 16), (8, 32)])
def test_nm_mask_equals_a_stable_sort_with_many_ties(n, m):
    """The pairwise ranking (m ≤ 16) and the sort (beyond) choose exactly what a stable descending
    sort of each group does, ties included."""
    torch.manual_seed(1)
    scores = torch.randint(0, 3, (64, 4 * m)).float()  # three values: ties in nearly every group
    order = torch.sort(scores.reshape(-1, m), dim=-1, descending=True, stable=True).indices
    expected = torch.zeros(order.shape, dtype=torch.bool).scatter_(1, order[:, :n], True).reshape(scores.shape)
    assert torch.equal(nm_mask_from_scores(scores, n, m), expected)


def test_nm_mask_rejects_partial_groups():
    with pytest.raises(ValueError, match="not divisible"):
        nm_mask_from_scores(torch.randn(2, 6), 2, 4)


def test_count_violations_treats_existing_zeros_as_pruned():
    weight = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    assert count_nm_violations(weight, 2, 4) == 0
    weight[0, 7] = 1.0
    assert count_nm_violations(weight, 2, 4) == 1


@pytest.mark.parametrize("per_row", [True, False])
def test_unstructured_mask_hits_the_requested_fraction(per_row):
    torch.manual_seed(1)
    scores = torch.rand(8, 100)
    mask = unstructured_mask_from_scores(scores, 0.3, per_row=per_row)
    assert (~mask).sum() == 240
    if per_row:
        assert torch.all((~mask).sum(dim=1) == 30)
        for row in range(8):
            assert scores[row][mask[row]].min() >= scores[row][~mask[row]].max()
    else:
        assert scores[mask].min() >= scores[~mask].max()


def test_pack_unpack_round_trip_is_one_bit_per_weight():
    torch.manual_seed(2)
    mask = torch.rand(7, 13) > 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(7 * 13 / 8)
    assert torch.equal(unpack_mask(packed, (7, 13)), mask)
