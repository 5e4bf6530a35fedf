"""The package layout: layers import downwards only, and ``import biotune`` keeps its public names."""

from __future__ import annotations

import ast
from pathlib import Path

import biotune

SRC = Path(biotune.__file__).parent

# The direction of flow (README, "How it is built"): a module may import its own layer and the
# layers before it. errors/config/_files/_version are shared by all and import only each other.
LAYERS = ("shared", "data", "models", "training", "search", "compare", "top")
SHARED = {"errors", "config", "_files", "_registry", "_version"}
TOP = {"pipeline", "results", "cli", "__init__", "__main__"}

PUBLIC = {
    "BASELINES", "BioTuneError", "Block", "Compute", "Configuration", "DataConfig", "FineTuner", "FinalResult",
    "FitnessEvaluator", "ImageDataset", "LoadedModel", "MemeticEvolution", "ModelConfig", "PRESETS", "Predictions",
    "RandomSearch", "RankedConfiguration", "Regime", "RunConfig", "RunResult", "RuntimeConfig", "STRATEGIES",
    "SearchConfig", "SearchListener", "SearchResult", "Selection", "SplitData", "TPESearch", "TrainConfig",
    "TrainResult", "baseline_plan", "build_model", "decode", "export_model", "finetune", "full_finetune_genome",
    "load_configuration", "load_dataset", "load_model", "lora_model", "make_engine", "param_groups",
    "partition_model", "predict", "preprocess", "run", "run_search", "split_dataset", "__version__",
}


def _layer(parts: tuple[str, ...]) -> str:
    """The layer of a module given as its parts below ``biotune`` (e.g. ``("search", "loop")``)."""
    head = parts[0] if parts else "__init__"
    if head in SHARED:
        return "shared"
    if head in TOP:
        return "top"
    assert head in LAYERS, f"biotune.{'.'.join(parts)} belongs to no layer: add it to LAYERS, SHARED or TOP"
    return head


def _imports(path: Path, root: Path = SRC) -> list[tuple[int, tuple[str, ...]]]:
    """Every biotune module ``path`` (inside ``root``) imports, lazy imports inside functions included."""
    own = path.relative_to(root).with_suffix("").parts
    package = own[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + tuple(node.module.split(".") if node.module else ())
            elif node.module and node.module.split(".")[0] == "biotune":
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "biotune":
                    found.append((node.lineno, tuple(alias.name.split(".")[1:])))
    return found


def test_every_module_imports_only_its_own_layer_and_lower_ones():
    upward = []
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 30
    for path in modules:
        source = _layer(path.relative_to(SRC).with_suffix("").parts)
        for line, target in _imports(path):
            layer = _layer(target)
            if LAYERS.index(layer) > LAYERS.index(source):
                upward.append(f"{path.relative_to(SRC)}:{line} ({source}) imports biotune.{'.'.join(target)} ({layer})")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The scan above must be able to fail: a lazy import of the search inside the data layer is seen."""
    copy = tmp_path / "data" / "dataset.py"
    copy.parent.mkdir()
    copy.write_text((SRC / "data" / "dataset.py").read_text() + "\n\ndef _f():\n    from ..search.genome import decode\n")
    targets = [t for _, t in _imports(copy, tmp_path)]
    assert ("search", "genome") in targets
    assert LAYERS.index(_layer(("search", "genome"))) > LAYERS.index(_layer(("data", "dataset")))


def test_import_biotune_exposes_every_public_name():
    missing = sorted(n for n in PUBLIC if not hasattr(biotune, n))
    assert not missing, f"biotune no longer exposes {missing}"


def test_each_subpackage_says_what_it_is_for():
    for package in ("data", "models", "training", "search", "compare", "cli"):
        doc = ast.get_docstring(ast.parse((SRC / package / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 10, f"biotune/{package}/__init__.py needs a docstring saying what it is for"


def test_the_command_line_imports_only_public_names():
    """``cli`` is a thin layer over the public API: what it imports from a package is what the package's
    ``__init__`` exports; from a module, what its ``__all__`` lists (``config``, ``errors``)."""
    import importlib

    private = []
    for path in sorted((SRC / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level < 2:
                continue
            module = "biotune" + ("." + node.module if node.module else "")
            target = importlib.import_module(module)
            public = getattr(target, "__all__", None)
            for alias in node.names:
                exported = public is not None and alias.name in public
                if hasattr(target, "__path__"):  # a package: its __init__'s re-exports (``name as name``)
                    source = Path(target.__file__).read_text()
                    exported = exported or f"as {alias.name}\n" in source
                if not exported or module.split(".")[-1].startswith("_"):
                    private.append(f"{path.name}:{node.lineno} {module}.{alias.name}")
    assert not private, private
