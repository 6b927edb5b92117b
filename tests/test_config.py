import pytest

from hyperprune.config import NMPattern, PruneConfig, SparsityTarget


@pytest.mark.parametrize("text,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8), (" 2 : 4 ", 2, 4)])
def test_pattern_parses(text, n, m):
    pattern = NMPattern.parse(text)
    assert (pattern.n, pattern.m) == (n, m)
    assert str(pattern) == f"{n}:{m}"


@pytest.mark.parametrize("text", ["3:2", "0:4", "4:4", "a:b", "2-4", ""])
def test_bad_patterns_are_rejected(text):
    with pytest.raises(ValueError):
        NMPattern.parse(text)


def test_sparsity_target_from_args():
    assert str(SparsityTarget.from_args(None, None)) == "2:4"
    assert SparsityTarget.from_args(None, 0.5).sparsity == 0.5
    assert SparsityTarget.from_args("1:4", None).fraction == pytest.approx(0.75)
    with pytest.raises(ValueError, match="not both"):
        SparsityTarget.from_args("2:4", 0.5)
    with pytest.raises(ValueError):
        SparsityTarget(sparsity=1.5)


def test_config_round_trips_through_json():
    config = PruneConfig(target=SparsityTarget(pattern="4:8"), nsamples=8)
    again = PruneConfig.model_validate_json(config.model_dump_json())
    assert again == config
    assert again.target.pattern == NMPattern(n=4, m=8)
