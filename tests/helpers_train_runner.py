"""One ``train.main()`` run inside a runner process that makes several runs one after the other.

The runner scripts of tests/test_cli_train.py and tests/test_cli_train_signals.py call
:func:`run_and_record` per run: one interpreter start (torch, transformers) for all of them,
while each run keeps its own stderr and exit status for the test to read (``run_result``).
"""

from __future__ import annotations

import os
import sys
import traceback


def run_and_record(args: list[str], name: str) -> None:
    """``train.main(args)``; its stderr goes to ``<name>.stderr``, its exit status (1 after an
    exception) to ``<name>.status``."""
    import train

    sys.stderr.flush()
    with open(name + ".stderr", "w") as handle:
        os.dup2(handle.fileno(), 2)  # every writer to stderr, whenever it took sys.stderr
    try:
        status = train.main(args)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stderr.flush()
    with open(name + ".status", "w") as handle:
        handle.write(str(status))
