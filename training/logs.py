"""Logging of a training run: the console and ``<output_dir>/train.log`` on the main process."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(logger: logging.Logger, output_dir: str, is_main: bool) -> None:
    """Log to stderr and ``<output_dir>/train.log`` on the main process; warnings elsewhere.

    The packages' own loggers (a dataset's crop notice, a checkpoint warning) go to the same
    places.
    """
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if is_main:
        handlers.append(logging.FileHandler(os.path.join(output_dir, "train.log"), encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    for name in ("data", "modeling", "training", "scoring"):
        lib = logging.getLogger(name)
        lib.handlers = list(logger.handlers)
        lib.setLevel(logger.level)
        lib.propagate = False
