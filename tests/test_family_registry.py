"""The house plan, checked: a family registers itself once and every command finds it; the import graph points
one way (commands -> families -> common) with no circles.

The stand-in family (tests/standin_family: one folder plus its ``register_family`` call) is taken through
train -> evaluate -> export -> index -> localize, summary, visualize and families by the commands themselves.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from common.errors import CVGLError
from common.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"experiments": 0, "benchmarks": 0, "geodtr_tf": 1, "mgtl_tf": 1, "common": 2}


@pytest.fixture
def standin():
    import tests.standin_family as fam

    registry.register_family(fam.FAMILY)  # idempotent; re-registers after an earlier test's teardown
    yield fam
    registry.unregister_family("standin")


# ---------------------------------------------------------------------------------------------- registry
def test_shipped_families_are_registered_with_their_parts():
    fams = registry.families()
    assert {"geodtr", "mgtl", "safa"} <= set(fams)
    for name in ("geodtr", "mgtl", "safa"):
        fam = fams[name]
        assert fam.input_specs and fam.model_classes and fam.summarize
        assert os.path.isdir(fam.config_dir) and any(f.endswith(".yaml") for f in os.listdir(fam.config_dir))
    assert fams["geodtr"].input_specs[0].name == "geodtr_polar" and set(fams["geodtr"].converters) == {"geodtr",
                                                                                                      "resnet34"}
    assert fams["safa"].input_specs == fams["mgtl"].input_specs  # MGTL reads SAFA's pixels
    assert fams["geodtr"].demo["config"] == "geodtr_cvusa_polar_ls" and fams["mgtl"].demo["config"] == "mgtl_cvusa_full"


def test_registry_refuses_what_it_cannot_keep():
    fam = registry.get_family("geodtr")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_family(registry.Family(name="geodtr", build_model=lambda cfg, spec: None))
    with pytest.raises(ValueError, match="identifier"):
        registry.register_family(registry.Family(name="no such", build_model=fam.build_model))
    with pytest.raises(TypeError):
        registry.register_family({"name": "x"})
    with pytest.raises(CVGLError, match=r"unknown model family 'nope'; known: geodtr, mgtl, safa"):
        registry.get_family("nope")
    with pytest.raises(CVGLError, match="no registered model family"):
        registry.family_of(object())


def test_a_family_module_that_fails_to_import_is_named(monkeypatch):
    monkeypatch.setattr(registry, "_FAILED", {})
    registry.add_family_modules(["no_such_family_package"])
    with pytest.raises(CVGLError, match="no_such_family_package failed to import"):
        registry.get_family("nope")


def test_a_family_module_named_again_after_an_unregister_is_registered_again(standin):
    """A module imports once; naming it again (CVGL_FAMILIES in a later command of the same process, as the
    docs tests do) must bring back the families it registered, not find the import a no-op."""
    registry.add_family_modules([standin.__name__])
    assert "standin" in registry.families()
    registry.unregister_family("standin")
    registry.add_family_modules([standin.__name__])
    assert registry.families()["standin"] is standin.FAMILY


# ------------------------------------------------------------------------------------- the stand-in family
@pytest.mark.slow
def test_a_new_family_goes_through_every_command(standin, tmp_path, capsys):
    import numpy as np

    from experiments import evaluate, export, families, index, localize, summary, train, visualize
    from tests.helpers.world import tiny_world

    world = tiny_world(tmp_path, "cvusa", n_train=24, n_val=8, aerial_size=64, pano_size=(16, 88))
    run, exp = str(tmp_path / "run"), str(tmp_path / "export")
    assert train.main(["--config", "standin_tiny", "--root", world, "--out", run]) == 0
    res = json.loads(open(os.path.join(run, "results.json")).read())
    assert res["epochs_done"] == 3 and res["config"] == "standin_tiny"

    out = str(tmp_path / "eval.json")
    assert evaluate.main(["--dataset", "cvusa", "--split", "val", "--root", world, "--run", run, "--out", out,
                          "--no-progress"]) == 0
    ev = json.loads(open(out).read())
    assert ev["metrics"]["R@10"] > 0 and ev["N"] == 8 and ev["config"] == "standin_tiny"

    assert export.main(["--run", run, "--out", exp]) == 0
    assert os.path.isfile(os.path.join(exp, "saved_model", "saved_model.pb"))
    idx = str(tmp_path / "index.npz")
    assert index.main(["build", "--export", exp, "--dataset", "cvusa", "--root", world, "--split", "val",
                       "--out", idx]) == 0
    from common.data.readers import read_split

    pair = read_split("cvusa", world, "val")[0]
    loc_dir = str(tmp_path / "loc")
    assert localize.main(["--export", exp, "--index", idx, "--query", pair.ground, "--top-k", "3",
                          "--out", loc_dir]) == 0
    found = json.loads(open(os.path.join(loc_dir, os.path.splitext(os.path.basename(pair.ground))[0] + ".json")).read())
    assert len(found["hits"]) == 3 and found["true_id"] == pair.id and 1 <= found["true_rank"] <= 8

    # the library's one loader reads all three sources to the same model
    from common.serving.loading import load_model

    a, b, c = load_model(run), load_model(os.path.join(run, "checkpoints", "best.keras")), load_model(exp)
    assert (a.kind, b.kind, c.kind) == ("run", "keras", "export")
    for loaded in (b, c):
        for va, vb in zip(a.model.weights, loaded.model.weights):
            np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))

    capsys.readouterr()
    assert summary.main(["--model", "standin", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == a.model.count_params()
    pic = str(tmp_path / "pic.png")
    assert visualize.main(["--weights", exp, "--ground", pair.ground, "--aerial", pair.aerial, "--out", pic]) == 0
    assert "ground feature map" in capsys.readouterr().out and os.path.isfile(pic)
    assert families.main(["--json"]) == 0
    listed = {f["name"]: f for f in json.loads(capsys.readouterr().out)}
    assert listed["standin"]["configs"] == ["standin_tiny"] and "standin_polar" in listed["standin"]["input_specs"]


@pytest.mark.slow  # a fresh process
def test_out_of_tree_family_loads_from_the_environment(tmp_path):
    env = dict(os.environ, CVGL_FAMILIES="tests.standin_family", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "experiments.families", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names = [f["name"] for f in json.loads(out.stdout)]
    assert names == ["geodtr", "mgtl", "safa", "standin"]


# -------------------------------------------------------------------------------------------- import graph
def _modules():
    mods = {}
    for pkg in LAYERS:
        for dp, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dp, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def _imports(mods):
    """module -> set of project modules it imports (top level and inside functions)."""
    edges = {}
    for name, path in mods.items():
        pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is no edge
                    found.add(t)
        edges[name] = found
    return edges


def test_imports_point_one_way():
    mods = _modules()
    wrong = []
    for src, targets in _imports(mods).items():
        top = src.split(".")[0]
        for dst in targets:
            dtop = dst.split(".")[0]
            if LAYERS[dtop] < LAYERS[top]:
                wrong.append(f"{src} -> {dst}")  # upward: common -> family/command, family -> command
            elif top == "experiments" and dtop == "experiments" and dst != "experiments":
                wrong.append(f"{src} -> {dst} (a command imports another command)")
            elif LAYERS[top] == 1 and LAYERS[dtop] == 1 and top != dtop and not (top, dtop) == ("mgtl_tf", "mgtl_tf"):
                wrong.append(f"{src} -> {dst} (one family imports another)")
    assert wrong == []


def test_no_import_circles():
    edges = _imports(_modules())
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_shared_code_names_no_family():
    """No family name or family package in common/ code (docstrings and comments aside)."""
    names = set(registry.family_names()) | {"geodtr_tf", "mgtl_tf"}
    hits = []
    for name, path in _modules().items():
        if not name.startswith("common"):
            continue
        tree = ast.parse(open(path).read())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                low = node.value.lower()
                hits += [f"{name}: {node.value[:60]!r}" for n in names if n in low.replace("-", "_").split()
                         or low == n]
    assert hits == []
