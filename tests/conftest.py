"""Test-wide settings: quiet TensorFlow, the default Keras backend, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture
def fixtures_dir():
    return FIXTURES


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# The shipped model families (and any named in CVGL_FAMILIES) are known to the registry, as for the commands.
import experiments  # noqa: E402,F401


# Rough seconds of each module's slow tests on 2 busy cores (measured; others count 20 s per slow test). Only
# the order of the suite depends on them, never a result.
SLOW_MODULE_SECONDS = {
    "test_train_resume.py": 260, "test_learning.py": 310, "test_docs.py": 190, "test_bad_inputs_runs.py": 120,
    "test_bad_inputs.py": 100, "test_geodtr_train_step.py": 95, "test_demo.py": 105, "test_export.py": 60,
    "test_localize.py": 65, "test_train_cli.py": 45, "test_export_security.py": 40, "test_safa_convert.py": 40,
    "test_package.py": 40, "test_shards.py": 50, "test_multiworker.py": 90,
}


def pytest_collection_modifyitems(config, items):
    """Balance ``make test``'s two workers (``--dist worksteal`` gives each a contiguous half of this order,
    then lets an idle worker take the tail of the other's queue). The slow tests are grouped by module (a
    module's fixtures are then built once) and the groups dealt, longest first, to the half with less work;
    each half starts with its slow groups and is filled up with fast tests. The fast lane keeps file order."""
    slow, fast = {}, []
    for item in items:
        if item.get_closest_marker("slow") is None:
            fast.append(item)
        else:
            slow.setdefault(item.path.name, []).append(item)
    if not slow:
        return
    halves, load = ([], []), [0.0, 0.0]
    weight = lambda name: SLOW_MODULE_SECONDS.get(name, 20.0 * len(slow[name]))  # noqa: E731
    for name in sorted(slow, key=weight, reverse=True):
        k = 0 if load[0] <= load[1] else 1
        halves[k].extend(slow[name])
        load[k] += weight(name)
    fill = max(0, len(items) // 2 - len(halves[0]))
    items[:] = halves[0] + fast[:fill] + halves[1] + fast[fill:]
