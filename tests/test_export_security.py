"""A SavedModel is a program: an export from elsewhere is read and checked before any of it runs.

A hostile export (an ``embed_ground`` that writes a file, or calls Python) is refused by every command that
loads exports -- evaluate, index build, localize -- with one ``error:`` line naming the op, exit status 2, no
traceback, and nothing written. The project's own exports pass (write_export checks each one it writes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from common.errors import CVGLError
from common.serving.graph_check import COMPUTE_OPS, check_saved_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def good_export(tmp_path_factory):
    """A real export of the stand-in family (small; every family's export is checked by write_export)."""
    import tests.standin_family as fam
    from common.serving.export import write_export
    from common.serving.preprocess import end_to_end

    out = str(tmp_path_factory.mktemp("exports") / "good")
    model = fam.build_model({}, fam.STANDIN_SPEC)
    write_export(end_to_end(model), out, {"name": "standin_tiny", "model": {"family": "standin"},
                                          "input_spec": fam.STANDIN_SPEC.to_config()})
    return out


def _hostile(good: str, out: str, kind: str, marker: str) -> str:
    """A copy of ``good`` whose SavedModel is replaced by a module whose embed_ground does ``kind``."""
    import tensorflow as tf

    shutil.copytree(good, out)
    shutil.rmtree(os.path.join(out, "saved_model"))

    class Hostile(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(1.0)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def embed_ground(self, images):
            x = tf.cast(images, tf.float32)
            if kind == "write_file":
                with tf.control_dependencies([tf.io.write_file(marker, "ran")]):
                    x = tf.identity(x)
            elif kind == "py_func":
                x = tf.py_function(lambda t: open(marker, "w").write("ran") and t, [x], tf.float32)
            elif kind == "read_file":
                x = x + tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32) * 0.0
            return tf.math.l2_normalize(tf.reshape(tf.reduce_mean(x, [1, 2]) * self.w, [-1, 3]), axis=-1)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def embed_aerial(self, images):
            return tf.math.l2_normalize(tf.reduce_mean(tf.cast(images, tf.float32), [1, 2]) * self.w, axis=-1)

    module = Hostile()
    tf.saved_model.save(module, os.path.join(out, "saved_model"),
                        signatures={"embed_ground": module.embed_ground, "embed_aerial": module.embed_aerial})
    return out


@pytest.mark.slow  # the module's export fixture (write_export already runs the check on every export)
def test_our_exports_pass_the_check(good_export):
    report = check_saved_model(os.path.join(good_export, "saved_model"))
    assert report["functions"] > 2 and set(report["ops"]) - COMPUTE_OPS <= {"SaveV2", "RestoreV2", "MergeV2Checkpoints",
                                                                          "ShardedFilename", "StringJoin",
                                                                          "StaticRegexFullMatch", "AssignVariableOp",
                                                                          "DisableCopyOnRead"}


@pytest.mark.slow  # builds and saves three hostile SavedModels
@pytest.mark.parametrize("kind,op", [("write_file", "WriteFile"), ("py_func", "EagerPyFunc"), ("read_file", "ReadFile")])
def test_hostile_export_is_refused_before_it_runs(good_export, tmp_path, kind, op):
    marker = str(tmp_path / "pwned.txt")
    bad = _hostile(good_export, str(tmp_path / "bad"), kind, marker)
    with pytest.raises(CVGLError, match=rf"refused: function .* runs op '{op}'"):
        check_saved_model(os.path.join(bad, "saved_model"))
    from common.serving.export import load_export

    with pytest.raises(CVGLError, match=op):
        load_export(bad)
    assert not os.path.exists(marker)


def _cli(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("CVGL_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_every_command_refuses_a_hostile_export(good_export, tmp_path):
    from tests.helpers.world import tiny_world

    world = tiny_world(tmp_path, "cvusa", n_train=4, n_val=4, aerial_size=64, pano_size=(16, 88))
    marker = str(tmp_path / "pwned.txt")
    bad = _hostile(good_export, str(tmp_path / "bad"), "write_file", marker)
    before = sorted(os.listdir(tmp_path))
    pano = os.path.join(world, "streetview", "panos")
    query = os.path.join(pano, sorted(os.listdir(pano))[0])
    index = str(tmp_path / "index.npz")
    runs = {
        "evaluate": ("experiments.evaluate", "--dataset", "cvusa", "--split", "val", "--root", world, "--export",
                     bad, "--out", str(tmp_path / "eval.json"), "--no-progress"),
        "index": ("experiments.index", "build", "--export", bad, "--dataset", "cvusa", "--root", world, "--split",
                  "val", "--out", index),
    }
    for name, argv in runs.items():
        out = _cli(*argv, cwd=str(tmp_path))
        assert out.returncode == 2, (name, out.stderr[-1500:])
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and "WriteFile" in lines[-1], (name, lines[-3:])
        assert "Traceback" not in out.stderr, name
    # localize needs an index: build one with the good export, then hand localize the hostile one
    assert _cli("experiments.index", "build", "--export", good_export, "--dataset", "cvusa", "--root", world,
                "--split", "val", "--out", index, cwd=str(tmp_path)).returncode == 0
    out = _cli("experiments.localize", "--export", bad, "--index", index, "--query", query, "--out",
               str(tmp_path / "loc"), cwd=str(tmp_path))
    assert out.returncode == 2 and "WriteFile" in out.stderr and "Traceback" not in out.stderr
    assert not os.path.exists(marker)
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["index.npz"])  # nothing else was written


@pytest.mark.slow  # the module's export fixture
def test_an_export_without_its_metadata_is_refused(good_export, tmp_path):
    from common.serving.export import load_export

    bare = str(tmp_path / "bare")
    shutil.copytree(good_export, bare)
    os.remove(os.path.join(bare, "export.json"))
    with pytest.raises(CVGLError, match="export.json is missing"):
        load_export(bare)
    meta = json.loads(open(os.path.join(good_export, "export.json")).read())
    meta["fingerprint"] = "0" * 64
    tampered = str(tmp_path / "tampered")
    shutil.copytree(good_export, tampered)
    with open(os.path.join(tampered, "export.json"), "w") as fh:
        json.dump(meta, fh)
    with pytest.raises(CVGLError, match="mismatched"):
        load_export(tampered)
