"""Run many command-line cases in one fresh process: ``python -m tests.helpers.cli_cases CASES.json``.

Each case is ``[module, [argv...]]``; it runs exactly as ``python -m module argv...`` would (the module's
``main`` through :func:`common.errors.run_cli`), with its stderr captured. Prints one JSON list on stdout:
``{"rc": exit status, "stderr": text, "traceback": whether a Python traceback was printed}`` per case. One
process (one TensorFlow start) for a whole catalogue of bad inputs.
"""

import contextlib
import importlib
import io
import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.pop("CVGL_TRACEBACK", None)


def run_case(module: str, argv: list) -> dict:
    from common.errors import run_cli

    err = io.StringIO()
    rc = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            mod = importlib.import_module(module)
            run_cli(mod.main, argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - an uncaught error is what the catalogue looks for
            traceback.print_exc()
            rc = 1
    text = err.getvalue()
    return {"rc": rc, "stderr": text, "traceback": "Traceback (most recent call last)" in text}


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cases(cases, families: str = "tests.standin_family") -> list:
    """Run ``cases`` (``[(module, argv)]``) in one fresh process (this module's ``main``); their results."""
    import subprocess
    import tempfile

    fd, path = tempfile.mkstemp(prefix="cli_cases_", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump([[m, [str(a) for a in argv]] for m, argv in cases], fh)
    env = dict(os.environ, PYTHONPATH=ROOT, CVGL_FAMILIES=families, TF_CPP_MIN_LOG_LEVEL="3")
    for k in ("CVGL_TRACEBACK", "CVGL_TEST_KILL_AT", "CVGL_TEST_NAN_AT"):
        env.pop(k, None)
    try:
        out = subprocess.run([sys.executable, "-m", "tests.helpers.cli_cases", path], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    finally:
        os.remove(path)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_one_error(res: dict, *needles) -> str:
    """Exit status 2, no traceback, exactly one ``error:`` line, holding every needle; that line."""
    assert res["rc"] == 2, res["stderr"][-2000:]
    assert not res["traceback"], res["stderr"][-2000:]
    errors = [ln for ln in res["stderr"].splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, res["stderr"][-2000:]
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def main() -> None:
    with open(sys.argv[1]) as fh:
        cases = json.load(fh)
    print(json.dumps([run_case(m, a) for m, a in cases]))


if __name__ == "__main__":
    main()
