"""The project as an installed package: ``pip install`` of a clean copy, the ``cvgl`` console command, and
the Python API's one import (``from experiments import api``) that lets plain ``keras.models.load_model``
read an export's ``model.keras``.

The install is ``pip install --no-deps --no-build-isolation --target DIR`` of a copy of the tracked files (the
pinned stack is already in this environment; no network), run from another folder with only DIR on the path,
so nothing is imported from the checkout.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(target):
    env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("CVGL_FAMILIES", None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("pkg")
    src = base / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if f.startswith("tests/") or not os.path.isfile(os.path.join(ROOT, f)):
            continue
        os.makedirs(src / os.path.dirname(f), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), src / f)
    target = base / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return target, base


@pytest.mark.slow
def test_installed_package_has_every_module_config_and_the_console_command(installed):
    target, base = installed
    for pkg in ("common", "geodtr_tf", "mgtl_tf", "experiments"):
        assert (target / pkg / "__init__.py").is_file(), pkg
    assert (target / "geodtr_tf" / "configs" / "geodtr_cvusa_polar_ls.yaml").is_file()
    assert (target / "mgtl_tf" / "safa" / "configs" / "safa_cvusa.yaml").is_file()
    assert not (target / "tests").exists()
    script = target / "bin" / "cvgl"
    assert script.is_file() and "experiments.cli" in script.read_text()
    run = lambda *a: subprocess.run([sys.executable, "-m", "experiments.cli", *a], cwd=base, env=_env(target),  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    out = run("--help")
    assert out.returncode == 0 and "convert-weights" in out.stdout and "localize" in out.stdout, out.stderr
    fams = run("families")
    assert fams.returncode == 0 and "geodtr" in fams.stdout and "safa" in fams.stdout, fams.stderr[-2000:]
    helped = run("evaluate", "--help")
    assert helped.returncode == 0 and "--weights" in helped.stdout
    bad = run("trian")
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


def test_cli_dispatches_every_command_module():
    from experiments import cli

    names = {f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments"))
             if f.endswith(".py") and f not in ("__init__.py", "cli.py", "api.py")}
    assert names == set(cli.COMMANDS), names ^ set(cli.COMMANDS)
    assert "convert-weights" in cli.usage()


@pytest.mark.slow
def test_one_import_lets_keras_load_an_export(tmp_path):
    """A fresh process that imports only ``experiments.api`` loads an export's model.keras with plain Keras."""
    import tests.standin_family  # noqa: F401  (a model to export; its class registers in this process only)

    from common.serving.export import write_export
    from common.serving.preprocess import end_to_end
    from geodtr_tf import build_model
    from geodtr_tf.specs import GEODTR_POLAR

    spec = GEODTR_POLAR.replace(name="tiny_api", ground_size=(32, 176), aerial_size=(32, 176))
    model = build_model({"backbone_weights": "random", "num_descriptors": 2, "num_layers": 1, "num_heads": 1,
                         "ffn_dim": 32, "backbone_widths": [8, 8, 16, 16], "backbone_depths": [1, 1, 1, 1]}, spec)
    out = str(tmp_path / "export")
    write_export(end_to_end(model), out, {"name": "tiny_api", "model": {"family": "geodtr"}})
    code = ("import numpy as np, keras\n"
            "from experiments import api  # the one import\n"
            f"m = keras.models.load_model({os.path.join(out, 'model.keras')!r})\n"
            "x = np.zeros((1, 32, 176, 3), 'uint8')\n"
            "print(type(m).__name__, m.embed_ground(x).shape)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "EndToEndModel (1, 32)" in res.stdout
    without = subprocess.run([sys.executable, "-c", code.replace("from experiments import api", "pass")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert without.returncode != 0  # without the import Keras cannot know the project's classes


def test_every_flag_with_a_default_says_it_in_help():
    """``--help`` of every command (and subcommand) shows each flag's default."""
    import argparse
    import importlib

    from experiments import cli

    missing = []
    for name in cli.COMMANDS:
        parsers = [(name, importlib.import_module(f"experiments.{name}").build_parser())]
        while parsers:
            where, parser = parsers.pop()
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    parsers += [(f"{where} {k}", v) for k, v in action.choices.items()]
                elif (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                      and not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                                  argparse._HelpAction))
                      and "default" not in (action.help or "").lower()):
                    missing.append(f"{where} {action.option_strings[0]} (default {action.default!r})")
    assert missing == []
