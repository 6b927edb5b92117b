"""A method is one module plus one registration: a toy method registered from outside the package
gets its CLI flags, its help, its config section and its report entry without any change to
cli, config or api; and a preset is options, not a subclass."""

import json

import pytest
import torch
from pydantic import Field

from hyperprune import register_method, register_preset
from hyperprune.cli import main
from hyperprune.config import Options
from hyperprune.methods import METHODS, PruningMethod, get_method
from hyperprune.methods.scoring import mask_from_scores


class ToyOptions(Options):
    power: float = Field(1.0, gt=0, description="score = |w| ** power")
    flip: bool = Field(False, description="keep the smallest weights instead")


@pytest.fixture
def toy_method():
    @register_method("toy", options=ToyOptions, flag_prefix="toy", summary="a test's own method")
    class Toy(PruningMethod):
        def prune_linear(self, linear, stats, target, where) -> torch.Tensor:
            scores = linear.weight.detach().abs().float() ** self.options.power
            return mask_from_scores(-scores if self.options.flip else scores, target, per_row=False)

    register_preset("toy+flip", "toy", "the toy, keeping the smallest weights", flip=True)
    yield Toy
    METHODS.pop("toy")
    METHODS.pop("toy+flip")


def test_a_method_registered_outside_the_package_runs_from_the_cli(toy_method, capsys, tiny_model_dir, calib_file, tmp_path):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    help_text = capsys.readouterr().out
    assert "toy options (also toy+flip):" in help_text and "--toy-power POWER" in help_text
    assert "score = |w| ** power (default: 1.0)" in help_text

    out = tmp_path / "out"
    code = main(["prune", "--model", str(tiny_model_dir), "--method", "toy+flip", "--toy-power", "2", "--calib",
                 str(calib_file), "--nsamples", "2", "--seqlen", "32", "--quiet", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "toy+flip" and report["nm_valid"] is True
    assert report["config"]["options"] == {"toy": {"power": 2.0, "flip": True}}


def test_a_flag_of_the_toy_is_refused_for_another_method(toy_method, capsys, tiny_model_dir):
    code = main(["prune", "--model", str(tiny_model_dir), "--method", "wanda", "--toy-power", "2", "--quiet"])
    assert code == 2 and "--toy-power is an option of method toy" in capsys.readouterr().err


def test_presets_are_options_of_their_base_method():
    lstsq, refit = get_method("sparsegpt+lstsq"), get_method("hyperprune+refit")
    assert lstsq.cls is get_method("sparsegpt").cls and lstsq.preset == {"refit": "lstsq"}
    assert refit.cls is get_method("hyperprune").cls and refit.preset == {"refit": True}
    from hyperprune.config import PruneConfig

    method = refit(PruneConfig(method="hyperprune+refit", options={"hyperprune": {"steps": 3, "refit": False}}))
    assert method.name == "hyperprune+refit" and method.options.refit is True and method.options.steps == 3


def test_a_presets_own_defaults_yield_to_the_users_options_and_show_in_the_help(toy_method, capsys):
    from hyperprune.config import PruneConfig

    register_preset("toy+square", "toy", "the toy, squared by default", defaults={"power": 2.0})
    try:
        square = get_method("toy+square")
        assert square(PruneConfig(method="toy+square")).options.power == 2.0
        assert square(PruneConfig(method="toy+square", options={"toy": {"power": 3.0}})).options.power == 3.0
        assert get_method("toy")(PruneConfig(method="toy")).options.power == 1.0  # the base keeps its own
        with pytest.raises(SystemExit):
            main(["prune", "--help"])
        assert "toy+square defaults to --toy-power 2.0." in " ".join(capsys.readouterr().out.split())
    finally:
        METHODS.pop("toy+square")


def test_a_method_or_preset_cannot_be_registered_twice(toy_method):
    with pytest.raises(ValueError, match="registered twice"):
        register_method("toy")(toy_method)
    with pytest.raises(ValueError, match="registered twice"):
        register_preset("toy+flip", "toy", "again", flip=True)
    with pytest.raises(Exception, match="flop"):
        register_preset("toy+bad", "toy", "a preset with a typo", flop=True)


def test_methods_declared_by_other_packages_are_loaded_through_entry_points(monkeypatch, tmp_path):
    import importlib.metadata
    import sys

    from hyperprune.methods import load_method_plugins

    (tmp_path / "plugin_toy.py").write_text(
        "from hyperprune import PruningMethod, register_method\n"
        "@register_method('plugin-toy')\n"
        "class PluginToy(PruningMethod):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint(name="plugin-toy", value="plugin_toy", group="hyperprune.methods")
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_here", group="hyperprune.methods")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [entry, broken] if group == "hyperprune.methods" else [])
    try:
        assert load_method_plugins() == ["plugin-toy"]
        assert "plugin-toy" in METHODS
    finally:
        METHODS.pop("plugin-toy", None)
        sys.modules.pop("plugin_toy", None)
