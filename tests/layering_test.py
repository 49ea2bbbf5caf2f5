"""The package's import direction, read from the source with `ast` (imports inside functions included).

Layers, lowest first (BUILD.md's module map): a module imports only modules of its own layer or
below, never in a cycle; inside the data layer the sources run one way too (types <- image files <-
one module per source <- the `datasets` registry), and so do the networks (network_layers <-
imagenet_resnets <- models); `tools/` and `experiments/` are never imported by
the package; the facts import neither TensorFlow nor Keras; callbacks and losses never build datasets.
"""

from __future__ import annotations

import ast
import os

import pytest

from conftest import REPO_ROOT

PACKAGE_DIR = os.path.join(REPO_ROOT, "cdt_tf")

LAYERS = (
    ("facts", {"catalog", "class_stats", "errors", "paper_results"}),
    ("config", {"config", "config_checks", "flag_definitions", "cli"}),
    (
        "data, methods, nets",
        {
            "data_types",
            "image_files",
            "source_cifar",
            "source_digits",
            "source_image_folder",
            "source_inat2018",
            "source_tiny_imagenet",
            "datasets",
            "input_pipeline",
            "augment",
            "run_data",
            "loss_base",
            "losses",
            "calibration",
            "optimizers",
            "schedules",
            "evaluate",
            "diagnosis",
            "distribution",
            "models",
            "max_norm",
            "sam",
            "contrastive",
            "imagenet_resnets",
            "network_layers",
        },
    ),
    ("run directory", {"rundir", "durability", "features"}),
    (
        "reports",
        {
            "post_hoc",
            "analyze",
            "retrain_classifier",
            "linear_head",
            "shift_learning",
            "weight_balancing",
            "export",
            "serving_module",
        },
    ),
    ("training", {"train", "objective", "callbacks", "multi_worker"}),
    ("entry points", {"main"}),
)
RANK = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}
# The data sources inside the data layer, lowest first: their types, the image files, one module per
# source (none imports another), the registry by --dataset name.
SOURCE_LAYERS = (
    {"data_types"},
    {"image_files"},
    {"source_cifar", "source_digits", "source_image_folder", "source_inat2018", "source_tiny_imagenet"},
    {"datasets"},
)
SOURCE_RANK = {module: rank for rank, modules in enumerate(SOURCE_LAYERS) for module in modules}
DATA_BUILDERS = {"input_pipeline", "augment", "run_data"} | set(SOURCE_RANK)
# The networks, lowest first: the layers every network is built from, ResNet-18/50, the registry by
# --model name (with the CIFAR ResNets and the digits ConvNet).
NET_LAYERS = ({"network_layers"}, {"imagenet_resnets"}, {"models"})
NET_RANK = {module: rank for rank, modules in enumerate(NET_LAYERS) for module in modules}


def _modules() -> list[str]:
    return sorted(
        name[: -len(".py")]
        for name in os.listdir(PACKAGE_DIR)
        if name.endswith(".py") and name != "__init__.py"
    )


def imports_of(path: str, package: str = "cdt_tf") -> set[str]:
    """Top-level names imported anywhere in a file: modules of `package` by their short name, others whole."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.add(parts[1] if parts[0] == package and len(parts) > 1 else parts[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == package and len(parts) == 1:  # from cdt_tf import a, b
                found.update(alias.name for alias in node.names)
            elif parts[0] == package:
                found.add(parts[1])
            else:
                found.add(parts[0])
    return found


GRAPH = {m: imports_of(os.path.join(PACKAGE_DIR, f"{m}.py")) & set(_modules()) for m in _modules()}


def test_every_module_has_a_layer():
    assert sorted(set(_modules()) - set(RANK)) == [], "add new modules to LAYERS and BUILD.md's map"
    assert sorted(set(RANK) - set(_modules())) == []


@pytest.mark.parametrize("module", _modules())
def test_imports_run_downward(module):
    upward = sorted(m for m in GRAPH[module] if RANK[m] > RANK[module])
    assert upward == [], f"{module} ({LAYERS[RANK[module]][0]}) imports higher layers: {upward}"


def test_every_source_module_has_a_rank():
    sources = {m for m in _modules() if m.startswith("source_")}
    assert sorted(sources - SOURCE_RANK.keys()) == [], "add new source modules to SOURCE_LAYERS"


@pytest.mark.parametrize("module", sorted(SOURCE_RANK))
def test_data_sources_import_downward(module):
    """data_types <- image_files <- source_* <- datasets: no source imports another or the registry."""
    found = GRAPH[module] & SOURCE_RANK.keys()
    assert sorted(m for m in found if SOURCE_RANK[m] >= SOURCE_RANK[module]) == []


@pytest.mark.parametrize("module", sorted(NET_RANK))
def test_networks_import_downward(module):
    """network_layers <- imagenet_resnets <- models."""
    found = GRAPH[module] & NET_RANK.keys()
    assert sorted(m for m in found if NET_RANK[m] >= NET_RANK[module]) == []


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the path, 2: done.

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path[path.index(target):] + [target])}")
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in _modules():
        if module not in state:
            visit(module, [module])


def test_the_package_never_imports_tools():
    offenders = [
        m for m in _modules() if {"tools", "experiments"} & imports_of(os.path.join(PACKAGE_DIR, f"{m}.py"))
    ]
    assert offenders == []


@pytest.mark.parametrize("module", sorted(LAYERS[0][1]))
def test_facts_import_neither_tensorflow_nor_keras(module):
    heavy = imports_of(os.path.join(PACKAGE_DIR, f"{module}.py")) & {
        "tensorflow",
        "keras",
        "tensorflow_datasets",
    }
    assert heavy == set()


@pytest.mark.parametrize("module", ["callbacks", "loss_base", "losses"])
def test_callbacks_and_losses_never_build_datasets(module):
    assert GRAPH[module] & DATA_BUILDERS == set()


def test_the_checker_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import os\n\ndef f():\n    from cdt_tf import train\n    import cdt_tf.rundir\n")
    assert imports_of(str(path)) == {"os", "train", "rundir"}
