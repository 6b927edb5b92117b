"""The package's layers point one way: no import runs from a lower layer up to a higher one, and
no two modules import each other (directly or around a circle). tools/structure_map.py prints
the whole map; docs/architecture.md shows it before and after issue 30."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def structure_map():
    spec = importlib.util.spec_from_file_location("structure_map", ROOT / "tools" / "structure_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_runs_back_up_and_there_are_no_cycles():
    tool = structure_map()
    edges = tool.graph(ROOT / "src")
    assert len(edges) > 60  # the whole package was read
    assert tool.back_arrows(edges) == []
    assert tool.cycles(edges) == []


def test_the_map_sees_a_back_arrow_and_a_cycle(tmp_path):
    """The check can fail: a numerics module importing the driver, and two modules importing each other."""
    tool = structure_map()
    package = tmp_path / "hyperprune"
    for folder in ("numerics", "engine"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "numerics" / "solver.py").write_text("def f():\n    from hyperprune.engine.loop import run\n")
    (package / "engine" / "loop.py").write_text("from hyperprune.engine import other\nrun = 1\n")
    (package / "engine" / "other.py").write_text("import hyperprune.engine.loop\n")
    edges = tool.graph(tmp_path)
    assert tool.back_arrows(edges) == [("hyperprune.numerics.solver", "hyperprune.engine.loop")]
    assert tool.cycles(edges) == [["hyperprune.engine.loop", "hyperprune.engine.other"]]


def test_no_two_modules_share_a_name_in_different_folders():
    names: dict[str, list[Path]] = {}
    for path in (ROOT / "src" / "hyperprune").rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            names.setdefault(path.stem, []).append(path.relative_to(ROOT))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}
