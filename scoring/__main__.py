"""``python -m scoring {setup,check}``: prepare and check the caption metrics (standard library only)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

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
        "when online (idempotent)",
    )
    p_check = sub.add_parser("check", help="exit 1 with a one-line reason if a metric cannot run")
    for p in (p_setup, p_check):
        p.add_argument("--cache_dir", default=None,
                       help="aac-metrics cache dir (default: $AAC_METRICS_CACHE_PATH or ~/.cache)")
    p_setup.add_argument("--no_download", action="store_true",
                         help="never try to download SPICE's CoreNLP 3.6.0 jars "
                         "(also: ENCLAP_METRICS_NO_DOWNLOAD=1)")
    p_setup.add_argument("--fense", action="store_true",
                         help="also download the FENSE / SPIDEr-FL models (needs network)")
    p_check.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                         help=f"comma-separated metrics (default: {','.join(DEFAULT_METRICS)}; "
                         f"valid: {','.join(METRIC_NAMES)})")
    args = parser.parse_args(argv)
    try:
        if args.command == "setup":
            no_download = args.no_download or os.environ.get("ENCLAP_METRICS_NO_DOWNLOAD") == "1"
            setup(args.cache_dir, download=not no_download, fense=args.fense)
        else:
            names = preflight(args.metrics, cache_dir=args.cache_dir)
            print(f"metrics ready: {', '.join(DISPLAY_NAMES[n] for n in names)}")
    except (MetricsUnavailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
