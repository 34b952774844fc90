"""Speed and memory benchmarks: ``python -m benchmarks.<name> --help``. Each prints a table of ratios against
a baseline measured in the same run.
"""

import experiments  # noqa: F401  (registers the shipped model families, as for the commands)
