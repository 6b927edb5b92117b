"""The compact checkpoint: round trip, refusal by plain transformers, verify."""

from __future__ import annotations

import json

import pytest
import torch

from hyperprune.cli import main
from hyperprune.export.compact_format import compress_matrix, decompress_matrix, pack_positions, unpack_positions
from hyperprune.models import load_model


def test_positions_pack_four_to_a_byte_and_back():
    positions = torch.tensor([0, 3, 1, 2, 3, 3, 0])
    packed = pack_positions(positions, 4)
    assert packed.dtype == torch.uint8 and packed.numel() == 2
    assert torch.equal(unpack_positions(packed, 7), positions)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_matrix_round_trip_is_exact_and_smaller(n, m):
    torch.manual_seed(0)
    weight = torch.randn(6, 16).to(torch.bfloat16)
    keep = torch.zeros(6, 16, dtype=torch.bool).view(-1, m)
    keep.scatter_(1, torch.rand(keep.shape).argsort(dim=1)[:, :n], True)
    keep = keep.view(6, 16)
    weight = weight * keep
    weight[0, keep[0].nonzero()[0]] = 0  # a kept weight that is zero survives too
    parts = compress_matrix(weight, keep, n, m)
    assert parts["values"].shape == (6, 16 * n // m) and parts["values"].dtype == torch.bfloat16
    assert ("index" in parts) == (m == 4)
    assert torch.equal(decompress_matrix(parts, (6, 16), n, m), weight)
    assert compress_matrix(weight, torch.ones_like(keep), n, m) is None  # not n:m: stored dense


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_compact_export_round_trip_is_bit_identical(tmp_path, tiny_model_dir, calib_file, pattern):
    from hyperprune import load_pretrained

    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--method", "sparsegpt", "--pattern", pattern, "--calib", str(calib_file),
                 "--nsamples", "4", "--seqlen", "32", "--no-stream", "--output", str(pruned), "--quiet"]) == 0
    out = tmp_path / "compact"
    assert main(["export", str(pruned), "--format", "compact", "--output", str(out)]) == 0
    rebuilt = load_pretrained(out).state_dict()
    source = load_model(str(pruned)).model.state_dict()
    assert rebuilt.keys() == source.keys()
    for name in source:
        assert rebuilt[name].dtype == source[name].dtype and torch.equal(rebuilt[name], source[name]), name
    manifest = json.loads((out / "hyperprune-compact.json").read_text())
    assert manifest["bytes"]["compact"] < manifest["bytes"]["source_safetensors"] and not manifest["stored_dense"]
    assert main(["verify", str(out)]) == 0


def test_plain_transformers_refuses_a_compact_checkpoint(tmp_path, tiny_model_dir, calib_file):
    from transformers import AutoModelForCausalLM

    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--method", "magnitude", "--calib", str(calib_file),
                 "--nsamples", "2", "--seqlen", "16", "--no-stream", "--output", str(pruned), "--quiet"]) == 0
    out = tmp_path / "compact"
    assert main(["export", str(pruned), "--format", "compact", "--output", str(out)]) == 0
    with pytest.raises((OSError, ValueError)):
        AutoModelForCausalLM.from_pretrained(out)
