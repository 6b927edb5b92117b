"""Slow: method ordering on the embedded model (run with `make test-all`, not in CI)."""

import pytest

from hyperprune.api import compare
from hyperprune.config import PruneConfig

pytestmark = pytest.mark.slow


def test_expected_ordering_on_the_embedded_model():
    result = compare(
        ["dense", "magnitude", "wanda", "sparsegpt"],
        PruneConfig(nsamples=16, seqlen=256),
        eval_source="brown-test",
        eval_windows=16,
        progress=False,
    )
    ppl = {name: r["ppl"] for name, r in result["methods"].items()}
    assert ppl["dense"] < ppl["sparsegpt"] < ppl["magnitude"]
    assert ppl["dense"] < ppl["wanda"] < ppl["magnitude"]
    assert all(r["nm_valid"] for name, r in result["methods"].items() if name != "dense")
