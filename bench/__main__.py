"""``python -m bench``: run the benchmark suite (see ``bench/run.py``)."""
import sys

from bench import unset_triton_interpreter

unset_triton_interpreter()

from bench.run import main  # noqa: E402  (after the environment is settled)

sys.exit(main())
