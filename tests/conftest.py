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


def pytest_collection_modifyitems(config, items):
    """The slow tests first (a stable sort: each module's tests stay in their order), so that with
    ``make test``'s two workers (``--dist worksteal``) no long test starts last while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
