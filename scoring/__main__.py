"""``python -m scoring {setup,check,compare}``: prepare and check the caption metrics, compare two systems.

Nothing heavy (torch, transformers, aac-metrics) is imported until ``compare`` scores.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from common.errors import UserError, one_line
from scoring.install import setup
from scoring.java import MetricsUnavailable, preflight
from scoring.names import DEFAULT_METRICS, DISPLAY_NAMES, METRIC_NAMES


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m scoring {setup,check}``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m scoring",
        description="Prepare and check the caption metrics (aac-metrics, Java 11, jars).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser(
        "setup",
        help="link the jars into aac-metrics' cache, find Java 11, fetch SPICE's CoreNLP "
        "and FENSE's models when online (idempotent)",
    )
    p_check = sub.add_parser("check", help="exit 1 with a one-line reason if a metric cannot run")
    p_compare = sub.add_parser(
        "compare", help="B - A per metric on the same clips, with paired-bootstrap 95%% intervals")
    p_compare.add_argument("a_csv", help="system A's predictions (evaluate.py --save_path output)")
    p_compare.add_argument("b_csv", help="system B's predictions, same clips")
    p_compare.add_argument("--test_csv", required=True, help="the split with the references")
    p_compare.add_argument("--metrics", nargs="+", default=None,
                           help="metrics, as in evaluate.py (default: the defaults this machine can run)")
    p_compare.add_argument("--bootstrap", type=int, default=1000, help="resamples (default: 1000; 0: none)")
    p_compare.add_argument("--device", default="auto",
                           help="device for FENSE's models: auto (CUDA when present), cpu, cuda:N (default: auto)")
    for p in (p_setup, p_check):
        p.add_argument("--cache_dir", default=None,
                       help="aac-metrics cache dir (default: $AAC_METRICS_CACHE_PATH or ~/.cache)")
    p_setup.add_argument("--no_download", action="store_true",
                         help="never try to download SPICE's CoreNLP 3.6.0 jars or FENSE's models "
                         "(also: ENCLAP_METRICS_NO_DOWNLOAD=1)")
    p_check.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                         help=f"comma-separated metrics (default: {','.join(DEFAULT_METRICS)}; "
                         f"valid: {','.join(METRIC_NAMES)})")
    args = parser.parse_args(argv)
    try:
        if args.command == "compare":
            import logging

            from scoring.compare import compare

            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
            metrics = ",".join(args.metrics) if args.metrics else None  # "a b" and "a,b" alike
            from common.device import resolve_device

            device = str(resolve_device(args.device))
            print(compare(args.a_csv, args.b_csv, args.test_csv, metrics, args.bootstrap, device))
        elif args.command == "setup":
            no_download = args.no_download or os.environ.get("ENCLAP_METRICS_NO_DOWNLOAD") == "1"
            setup(args.cache_dir, download=not no_download)
        else:
            names = preflight(args.metrics, cache_dir=args.cache_dir)
            print(f"metrics ready: {', '.join(DISPLAY_NAMES[n] for n in names)}")
    except (UserError, ValueError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
