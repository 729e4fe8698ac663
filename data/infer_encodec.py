"""EnCodec codes only, with the original EnCLAP script's flags (a thin wrapper over preprocess).

    python data/infer_encodec.py --data_path WAVS --save_path OUT/encodec [--device cuda]

Equivalent to ``python data/preprocess.py --data_path WAVS --encodec_path OUT/encodec
--skip_clap``; any other ``data/preprocess.py`` flag (``--batch_size``, ``--num_workers``,
``--shard``, ``--random_weights``, ...) is passed through. Prefer ``data/preprocess.py``,
which decodes each file once for both encoders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: import from the repository root, not data/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from data import preprocess


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parses the original flags and runs :func:`data.preprocess.main`; returns its exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Unknown flags go to data/preprocess.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_path", required=True, help="folder of audio files (recursive)")
    parser.add_argument("--save_path", required=True, help="output root of the EnCodec .npy tree")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    args, rest = parser.parse_known_args(argv)
    return preprocess.main(["--data_path", args.data_path, "--encodec_path", args.save_path,
                            "--device", args.device, "--skip_clap", *rest])


if __name__ == "__main__":
    sys.exit(main())
