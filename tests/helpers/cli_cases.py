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


def main() -> None:
    with open(sys.argv[1]) as fh:
        cases = json.load(fh)
    print(json.dumps([run_case(m, a) for m, a in cases]))


if __name__ == "__main__":
    main()
