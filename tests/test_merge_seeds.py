"""The seed-merging benchmark script: means, spreads and which runs' times count."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_seeds.py"


@pytest.fixture(scope="module")
def merge_seeds():
    spec = importlib.util.spec_from_file_location("merge_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(seed: int, ppl: dict[str, float], seconds: dict[str, float]) -> dict:
    methods = {name: {"ppl_by_eval": {"sotu": value}, "prune_seconds": seconds[name], "peak_rss_bytes": 2**30 * (seed + 1)}
               for name, value in ppl.items()}
    return {"seed": seed, "eval": "sotu", "evals": {"sotu": {}}, "methods": methods}


def test_mean_spread_and_time_ratio(merge_seeds):
    runs = [run(0, {"sparsegpt": 100.0, "hp": 80.0}, {"sparsegpt": 10.0, "hp": 50.0}),
            run(1, {"sparsegpt": 90.0, "hp": 84.0}, {"sparsegpt": 30.0, "hp": 90.0}),
            run(2, {"hp": 88.0}, {"hp": 70.0})]  # a seed may run only some methods
    merged = merge_seeds.merge(runs)["methods"]
    assert merged["sparsegpt"]["ppl"]["sotu"]["mean"] == pytest.approx(95.0)
    assert merged["sparsegpt"]["ppl"]["sotu"]["half_range"] == pytest.approx(5.0)
    assert merged["hp"]["seeds"] == [0, 1, 2] and merged["hp"]["ppl"]["sotu"]["mean"] == pytest.approx(84.0)
    assert merged["hp"]["prune_seconds_median"] == pytest.approx(70.0)
    assert merged["hp"]["time_vs_sparsegpt"] == pytest.approx(70.0 / 20.0)
    assert merged["hp"]["peak_rss_bytes"] == 3 * 2**30


def test_time_seeds_keep_quality_from_every_seed(merge_seeds):
    runs = [run(0, {"sparsegpt": 100.0, "hp": 80.0}, {"sparsegpt": 10.0, "hp": 50.0}),
            run(1, {"sparsegpt": 90.0, "hp": 84.0}, {"sparsegpt": 30.0, "hp": 90.0})]
    merged = merge_seeds.merge(runs, time_seeds={0})
    row = merged["methods"]["hp"]
    assert row["ppl"]["sotu"]["values"] == [80.0, 84.0]
    assert row["prune_seconds_median"] == pytest.approx(50.0) and row["time_vs_sparsegpt"] == pytest.approx(5.0)
    assert merged["time_seeds"] == [0]
    assert "| hp | 2 | 82.00 ± 2.00 |" in merge_seeds.markdown(merged)


def test_a_labelled_input_gets_rows_of_its_own(merge_seeds, tmp_path):
    import json

    path = tmp_path / "cholesky.json"
    path.write_text(json.dumps(run(0, {"sparsegpt+lstsq": 90.0}, {"sparsegpt+lstsq": 30.0})))
    plain = merge_seeds.load_run(str(path))
    labelled = merge_seeds.load_run(f"{path}@cholesky")
    assert list(plain["methods"]) == ["sparsegpt+lstsq"] and list(labelled["methods"]) == ["sparsegpt+lstsq (cholesky)"]
    merged = merge_seeds.merge([run(0, {"sparsegpt+lstsq": 80.0, "sparsegpt": 100.0}, {"sparsegpt+lstsq": 15.0, "sparsegpt": 10.0}),
                                labelled])["methods"]
    assert merged["sparsegpt+lstsq (cholesky)"]["time_vs_sparsegpt"] == pytest.approx(3.0)
    assert merged["sparsegpt+lstsq"]["ppl"]["sotu"]["mean"] == pytest.approx(80.0)


def test_layer_wins_counts_wins_losses_and_ties_beyond_the_margin():
    layer_wins = load_benchmark("layer_wins").layer_wins
    layers = [{"info": {"learned_refit_error": learned, "prior_refit_error": 1.0, "refit_error": min(learned, 1.0)}}
              for learned in (0.9, 0.99999, 1.2, 0.5)] + [{"info": {"mask_error": 0.3}}]  # the last: no refit numbers
    summary = layer_wins(layers, margin=1e-4)
    assert (summary["layers"], summary["wins"], summary["losses"], summary["ties"]) == (4, 2, 1, 1)
    assert summary["learned_over_prior_median"] == pytest.approx((0.9 + 0.99999) / 2)
    assert layer_wins([{"info": {}}], margin=1e-4) is None
