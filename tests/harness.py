"""One test harness for every custom Keras layer and model of the project (in the spirit of keras-hub's
``TestCase.run_layer_test`` / ``run_model_saving_test`` / ``run_precision_test``).

:func:`check_layer` and :func:`check_model` run the same checks on a layer class or a model factory:

* **config**: ``cls.from_config(obj.get_config())`` gives an equal config, also through the registry
  (``serialize_keras_object`` / ``deserialize_keras_object``); ``dtype`` and ``trainable`` survive it;
* **call**: eager inference call (``training=False`` where ``call`` takes it), the expected output shape;
* **symbolic**: ``keras.KerasTensor`` inputs (``compute_output_spec``) give the eager output's shapes and
  dtypes, and so does a functional trace with a free batch axis (layers);
* **saving**: ``.keras`` save / load in a temporary directory gives identical outputs (layers inside a
  functional model, models as they are);
* **predict**: ``predict`` on a ``tf.data.Dataset`` (two batches) equals the eager call;
* **precision**: built with ``dtype="mixed_float16"`` and ``"float64"`` every sublayer
  (``_flatten_layers()``) carries that policy, float variables are float32 / float64, inference and training
  calls run (no ``AddV2 ... half tensor``), outputs are finite, symbolic dtypes equal the eager ones (a layer
  that returns float32 on purpose must say so in ``compute_output_spec``), and with the float32 weights the
  outputs stay close to float32's;
* **training**: one ``fit`` step (jit-compiled under JAX, where it catches variables that share buffers).

Everything is backend-agnostic: ``KERAS_BACKEND=jax`` runs the same checks under JAX
(:func:`run_pytest_under_backend` starts such a run in a subprocess; :func:`jax_skip_reason` says why it
cannot; float64 needs ``JAX_ENABLE_X64=1`` there, else it is skipped).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
from keras import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: set in the environment of a harness subprocess (so a test that launches one is not re-run inside it)
SUBPROCESS_ENV = "CVGL_HARNESS_SUBPROCESS"

MIXED = "mixed_float16"


# --- small tools ---------------------------------------------------------------------------------------

def backend() -> str:
    return keras.backend.backend()


def _args(input_data) -> tuple:
    """A tuple is the positional arguments of ``call``; anything else (array, dict) is its one argument."""
    return tuple(input_data) if isinstance(input_data, tuple) else (input_data,)


def _dtype(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def to_numpy(tree):
    return keras.tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), tree)


def _signature(tree):
    """{path: (shape, dtype)} of a (nested) output, shapes as tuples."""
    out = {}
    for path, t in keras.tree.flatten_with_path(tree):
        out[path] = (tuple(t.shape), _dtype(t))
    return out


def _free_batch(sig):
    return {k: ((None,) + s[1:] if s else s, d) for k, (s, d) in sig.items()}


def _call_kwargs(obj, call_kwargs, training):
    kw = dict(call_kwargs or {})
    if "training" in inspect.signature(obj.call).parameters:
        kw["training"] = training
    return kw


def _keras_tensors(args):
    return keras.tree.map_structure(lambda x: keras.KerasTensor(tuple(np.shape(x)), dtype=_dtype(x)), args)


def _inputs(args):
    return keras.tree.map_structure(lambda x: keras.Input(shape=tuple(np.shape(x))[1:], dtype=_dtype(x)),
                                    args)


def _is_float(dtype) -> bool:
    return "float" in keras.backend.standardize_dtype(dtype)


def assert_trees_close(got, want, atol=0.0, rtol=0.0, what=""):
    got, want = to_numpy(got), to_numpy(want)
    gf, wf = keras.tree.flatten_with_path(got), keras.tree.flatten_with_path(want)
    assert [p for p, _ in gf] == [p for p, _ in wf], f"{what}: output structure differs"
    for (path, g), (_, w) in zip(gf, wf):
        assert g.shape == w.shape, f"{what} {path}: shape {g.shape} != {w.shape}"
        if atol == 0.0 and rtol == 0.0:
            np.testing.assert_array_equal(g, w, err_msg=f"{what} {path}")
        else:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), atol=atol, rtol=rtol,
                                       err_msg=f"{what} {path}")


def _assert_finite(tree, what):
    for path, t in keras.tree.flatten_with_path(to_numpy(tree)):
        if _is_float(t.dtype):
            assert np.all(np.isfinite(t)), f"{what} {path}: non-finite values"


def assert_policy_everywhere(obj, policy, float32_sublayers=()):
    """Every sublayer has ``policy`` (those named in ``float32_sublayers`` are float32 by design), every
    float variable has the policy's variable dtype."""
    want_var = keras.dtype_policies.get(policy).variable_dtype
    wrong = {}
    for layer in obj._flatten_layers(include_self=True, recursive=True):
        expected = "float32" if layer.name in float32_sublayers else policy
        if layer.dtype_policy.name != expected:
            wrong[layer.name] = layer.dtype_policy.name
    assert not wrong, f"{type(obj).__name__}(dtype={policy!r}): sublayers with another policy: {wrong}"
    for v in obj.weights:
        if _is_float(v.dtype) and not any(f"/{n}/" in f"/{v.path}" for n in float32_sublayers):
            assert keras.backend.standardize_dtype(v.dtype) == want_var, (v.path, v.dtype)


def assert_config_round_trip(obj, cls=None):
    """from_config(get_config()) gives an equal config, directly and through the serialisation registry."""
    cls = cls or type(obj)
    config = obj.get_config()
    clone = cls.from_config(config)
    assert type(clone) is cls
    assert clone.get_config() == config, f"{cls.__name__}: from_config(get_config()) changed the config"
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(again) is cls and again.get_config() == config, f"{cls.__name__}: registry round trip"
    return clone


def assert_keeps_dtype_and_trainable(factory, cls, policy=MIXED):
    """``dtype`` and ``trainable`` given to the constructor survive get_config / from_config."""
    obj = factory(dtype=policy, trainable=False)
    clone = cls.from_config(obj.get_config())
    assert clone.dtype_policy.name == policy, f"{cls.__name__}.from_config dropped dtype={policy!r}"
    assert clone.trainable is False, f"{cls.__name__}.from_config dropped trainable=False"


def assert_symbolic_matches(obj, args, eager_out, call_kwargs):
    """``obj`` called on KerasTensors (compute_output_spec) gives the eager output's shapes and dtypes."""
    sym = obj(*_keras_tensors(args), **call_kwargs)
    got, want = _signature(sym), _signature(eager_out)
    assert got == want, f"{type(obj).__name__} ({obj.dtype_policy.name}): symbolic {got} != eager {want}"
    return sym


def tf_dataset(args, batch_size):
    import tensorflow as tf

    data = to_numpy(args)
    element = data[0] if len(data) == 1 else tuple(data)
    return tf.data.Dataset.from_tensor_slices((element,)).batch(batch_size)


def _predict(model, args, batch_size):
    return model.predict(tf_dataset(args, batch_size), verbose=0)


# --- the two entry points -----------------------------------------------------------------------------

def check_layer(cls, init_kwargs, input_data, expected_output_shape=None, *, call_kwargs=None,
                precision=(MIXED, "float64"), mixed_atol=None, float32_sublayers=(), run_saving=True,
                run_training=True, training_call=True, predict_atol=1e-6):
    """Run every check of the module docstring on ``cls(**init_kwargs)`` called on ``input_data``.

    ``input_data``: an array (one input) or a tuple (the positional inputs of ``call``), batch first with
    a batch of at least 2 (the predict check splits it in two batches). ``call_kwargs``: fixed non-tensor
    arguments of ``call``. ``expected_output_shape``: a shape, or a structure of shapes like the output.
    ``precision``: the policies of the precision check; ``mixed_atol``: if set, the mixed_float16 output
    (float32 weights copied in) must be this close to float32's. ``float32_sublayers``: names of sublayers
    that are float32 by design. Returns the float32 layer (called).
    """
    args = _args(input_data)

    def factory(**kw):
        return cls(**{**init_kwargs, **kw})

    # config
    layer = factory()
    assert_config_round_trip(layer, cls)
    assert_keeps_dtype_and_trainable(factory, cls)

    # eager inference call, shapes
    kw = _call_kwargs(layer, call_kwargs, training=False)
    out = layer(*args, **kw)
    if expected_output_shape is not None:
        got = keras.tree.map_structure(lambda t: tuple(t.shape), out)
        want = keras.tree.map_shape_structure(tuple, expected_output_shape)
        assert got == want, f"{cls.__name__}: output shape {got} != expected {want}"
    _assert_finite(out, cls.__name__)
    again = layer(*args, **kw)
    assert_trees_close(again, out, what=f"{cls.__name__} inference is deterministic")
    if training_call and "training" in kw:  # on a fresh layer: a training call may move state (BN statistics)
        fresh = factory()
        train_out = fresh(*args, **_call_kwargs(fresh, call_kwargs, training=True))
        assert _signature(train_out) == _signature(out), f"{cls.__name__}: training call output"

    # config round trip of the built layer, symbolic == eager
    assert_config_round_trip(layer, cls)
    assert_symbolic_matches(layer, args, out, kw)

    # functional trace (free batch), predict on tf.data, .keras round trip
    if run_saving:
        inputs = _inputs(args)
        outputs = layer(*inputs, **kw)
        assert _signature(outputs) == _free_batch(_signature(out)), f"{cls.__name__}: functional trace"
        model = keras.Model(list(inputs) if len(inputs) > 1 else inputs[0], outputs)
        assert_trees_close(_predict(model, args, max(1, len(np.asarray(args[0])) // 2)), out,
                           atol=_scaled_atol(predict_atol, out), rtol=1e-5,
                           what=f"{cls.__name__} predict(tf.data)")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "layer.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        inner = [x for x in loaded.layers if type(x) is cls]
        assert len(inner) == 1, f"{cls.__name__} not found in the reloaded model"
        assert inner[0].get_config() == layer.get_config()
        assert_trees_close(loaded(list(args) if len(args) > 1 else args[0]), out,
                           what=f"{cls.__name__} .keras round trip")

    # precision
    for policy in precision:
        if precision_skip_reason(policy):
            continue
        check_precision(factory, args, out, policy, call_kwargs=call_kwargs, reference=layer,
                        atol=_policy_atol(policy, mixed_atol), float32_sublayers=float32_sublayers,
                        training_call=training_call)

    if run_training and layer.trainable_weights:
        check_layer_training(factory, args, call_kwargs)
    return layer


def check_precision(factory, args, reference_out, policy, *, call_kwargs=None, reference=None, atol=None,
                    float32_sublayers=(), training_call=True, build=None, deterministic_training=False,
                    output_dtype=None):
    """Build with ``dtype=policy``: the policy reaches every sublayer, calls run, symbolic dtypes equal
    eager ones; with ``atol`` the outputs (reference weights copied in) are within atol of ``reference_out``.
    A model's loss (``compute_loss`` on its training outputs) is float32 and finite; with
    ``deterministic_training`` (no dropout, no noise) training outputs and loss are within atol too.
    ``output_dtype``: the dtype every inference output has whatever the policy (e.g. float32 descriptors)."""
    obj = factory(dtype=policy)
    name = f"{type(obj).__name__}(dtype={policy!r})"
    if build is not None:
        build(obj)
    kw = _call_kwargs(obj, call_kwargs, training=False)
    if reference is not None and atol is not None:
        if not obj.built:
            obj(*args, **kw)
        obj.set_weights(reference.get_weights())
    out = obj(*args, **kw)
    assert_policy_everywhere(obj, policy, float32_sublayers)
    _assert_finite(out, name)
    if output_dtype is not None:
        assert {d for _, d in _signature(out).values()} == {output_dtype}, f"{name}: {_signature(out)}"
    assert_symbolic_matches(obj, args, out, kw)
    if atol is not None:
        rtol = atol if policy == "float64" else 0.0
        assert_trees_close(_as_float32(out), reference_out, atol=atol, rtol=rtol, what=f"{name} vs float32")
    if training_call and "training" in kw:
        train_out = obj(*args, **_call_kwargs(obj, call_kwargs, training=True))
        _assert_finite(train_out, f"{name} training call")
        ref_train = None
        if deterministic_training and atol is not None:  # the outputs inference has too, and the loss
            ref_train = reference(*args, **_call_kwargs(reference, call_kwargs, training=True))
            pick = ((lambda t: {k: t[k] for k in reference_out}) if isinstance(reference_out, dict)
                    else (lambda t: t))
            assert_trees_close(_as_float32(pick(train_out)), pick(ref_train), atol=atol,
                               what=f"{name} training vs float32")
        if hasattr(obj, "family_loss"):
            loss = obj.compute_loss(args[0], None, train_out)
            assert _dtype(loss) == "float32" and np.isfinite(float(loss)), f"{name}: loss {loss}"
            if ref_train is not None:
                want = float(reference.compute_loss(args[0], None, ref_train))
                assert abs(float(loss) - want) <= atol, f"{name}: loss {float(loss)} vs float32 {want}"
    return obj, out


def precision_skip_reason(policy):
    """None when ``policy`` can run on this backend; why not otherwise."""
    if policy == "float64" and backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "JAX runs without float64 (jax_enable_x64 is off; JAX_ENABLE_X64=1 turns it on)"
    return None


def _scaled_atol(atol, tree):
    """``atol`` relative to the largest magnitude in ``tree`` (at least 1): float32 rounding of a compiled
    graph (fused multiply-adds) against eager grows with the values (normalised pixels reach ±150)."""
    flat = [np.max(np.abs(t)) for t in keras.tree.flatten(to_numpy(tree)) if _is_float(t.dtype) and t.size]
    return atol * max([1.0] + [float(v) for v in flat])


def _policy_atol(policy, mixed_atol):
    """float64 must agree with float32 to float32 noise (relative 1e-4); mixed policies to ``mixed_atol``,
    five times that for bfloat16 under JAX (XLA:CPU's bfloat16 arithmetic is looser than TensorFlow's:
    measured 0.045 on the tiny MGTL's unit-norm descriptors, against < 0.01 under TensorFlow)."""
    if policy == "float64":
        return 1e-4
    if policy == "mixed_bfloat16" and mixed_atol is not None and backend() == "jax":
        return 5 * mixed_atol
    return mixed_atol


def _as_float32(tree):
    return keras.tree.map_structure(lambda t: ops.cast(t, "float32") if _is_float(t.dtype) else t, tree)


def check_layer_training(factory, args, call_kwargs=None):
    """One fit step of the layer inside a functional model, MSE towards random targets: jit-compiled under
    JAX (where it catches variables sharing a buffer), eager under TensorFlow (graph mode is covered by the
    predict check; tracing every gradient graph would triple the harness's time)."""
    layer = factory()
    inputs = _inputs(args)
    outputs = layer(*inputs, **_call_kwargs(layer, call_kwargs, training=None))
    model = keras.Model(list(inputs) if len(inputs) > 1 else inputs[0], outputs)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=backend() == "jax",
                  run_eagerly=backend() == "tensorflow")
    out = model(list(args) if len(args) > 1 else args[0])
    rng = np.random.default_rng(0)  # random targets: a unit-norm output has no gradient towards zeros
    targets = keras.tree.map_structure(lambda t: rng.normal(size=t.shape).astype("float32"), to_numpy(out))
    before = [np.array(ops.convert_to_numpy(v)) for v in layer.trainable_weights]
    x = list(args) if len(args) > 1 else args[0]
    hist = model.fit(x, targets, batch_size=len(np.asarray(args[0])), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    after = [np.asarray(ops.convert_to_numpy(v)) for v in layer.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "a fit step changed no weight"


def check_model(factory, inputs, expected_output_shape=None, *, precision=(MIXED,), mixed_atol=None,
                float32_sublayers=(), run_saving=True, run_training=True, train_eagerly=None, build=None,
                predict_atol=1e-6, compare_loaded=None, deterministic_training=False, output_dtype=None):
    """The checks of the module docstring for a model: ``factory(**kw)`` makes it (``kw`` may hold ``dtype``
    and ``trainable``); ``inputs`` is what ``call`` takes (a dict for the two-tower models). ``build``: a
    function that builds a fresh model (default: one inference call). ``train_eagerly`` (TF): run the fit
    step eagerly (default: eagerly on TensorFlow, where tracing two backbones' gradients costs minutes on
    CPU; jit-compiled on JAX). ``compare_loaded(original, loaded)``: extra checks after the .keras round
    trip. ``deterministic_training`` / ``output_dtype``: see :func:`check_precision`. Returns the float32
    model."""
    build = build or (lambda m: m(inputs, **_call_kwargs(m, None, training=False)))
    model = factory()
    cls = type(model)
    unbuilt_config = model.get_build_config()
    if not model.built:
        assert unbuilt_config is None, f"{cls.__name__}: unbuilt, it reports build config {unbuilt_config}"
    build(model)
    assert_config_round_trip(model, cls)
    assert_keeps_dtype_and_trainable(factory, cls)

    kw = _call_kwargs(model, None, training=False)
    out = model(inputs, **kw)
    if expected_output_shape is not None:
        got = keras.tree.map_structure(lambda t: tuple(t.shape), out)
        want = keras.tree.map_shape_structure(tuple, expected_output_shape)
        assert got == want, f"{cls.__name__}: output shape {got} != expected {want}"
    _assert_finite(out, cls.__name__)
    assert_symbolic_matches(model, (inputs,), out, kw)

    if run_saving:
        batch = len(np.asarray(next(iter(keras.tree.flatten(inputs)))))
        assert_trees_close(_predict(model, (inputs,), max(1, batch // 2)), out,
                           atol=_scaled_atol(predict_atol, out), rtol=1e-5,
                           what=f"{cls.__name__} predict(tf.data)")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        assert type(loaded) is cls and loaded.get_config() == model.get_config()
        assert_trees_close(loaded(inputs, **kw), out, what=f"{cls.__name__} .keras round trip")
        if compare_loaded is not None:
            compare_loaded(model, loaded)

    for policy in precision:
        if precision_skip_reason(policy):
            continue
        check_precision(factory, (inputs,), out, policy, reference=model,
                        atol=_policy_atol(policy, mixed_atol),
                        float32_sublayers=float32_sublayers, build=build,
                        deterministic_training=deterministic_training, output_dtype=output_dtype)

    if run_training and model.trainable_weights:
        check_model_training(factory, inputs, build, train_eagerly)
    return model


def check_model_training(factory, inputs, build, train_eagerly=None):
    """One ``fit`` step with the model's own loss: weights change, the loss is finite."""
    model = factory()
    build(model)
    if train_eagerly is None:
        train_eagerly = backend() == "tensorflow"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=train_eagerly and backend() != "jax",
                  jit_compile=backend() == "jax")
    before = [np.array(ops.convert_to_numpy(v)) for v in model.trainable_weights]
    batch = len(np.asarray(next(iter(keras.tree.flatten(inputs)))))
    hist = model.fit(inputs, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(hist.history["loss"][0])
    after = [np.asarray(ops.convert_to_numpy(v)) for v in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "a fit step changed no weight"


# --- other backends -----------------------------------------------------------------------------------

def jax_skip_reason():
    """None when a JAX subprocess can run here; otherwise why not (for ``pytest.skip``)."""
    if os.environ.get(SUBPROCESS_ENV):
        return "already inside a harness subprocess"
    if backend() == "jax":
        return "this run is already under KERAS_BACKEND=jax"
    if importlib.util.find_spec("jax") is None:
        return ("jax is not installed in this environment (not a project requirement); install jax[cpu] in a "
                "separate environment with this stack to run the harness under KERAS_BACKEND=jax")
    return None


def run_pytest_under_backend(backend_name, test_file, extra_args=(), timeout=900):
    """Run ``pytest test_file`` in a subprocess with ``KERAS_BACKEND=backend_name``; returns the
    CompletedProcess (stdout + stderr in .stdout)."""
    env = dict(os.environ, KERAS_BACKEND=backend_name, **{SUBPROCESS_ENV: "1"})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "pytest", test_file, "-p", "no:cacheprovider", "-q", "-x",
           "-o", "addopts=", *extra_args]
    return subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
