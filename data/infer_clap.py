"""CLAP embeddings only, with the original EnCLAP script's flags (a thin wrapper over preprocess).

    python data/infer_clap.py --data_path WAVS --save_path OUT/clap \
        --clap_ckpt 630k-audioset-fusion-best.pt [--enable_fusion True] [--device cuda]

Equivalent to ``python data/preprocess.py --data_path WAVS --clap_path OUT/clap --clap_ckpt
CKPT --skip_encodec``; any other ``data/preprocess.py`` flag is passed through.

The original script declared ``--enable_fusion`` with ``type=bool``, so ``--enable_fusion
False`` silently meant True. Here the value is parsed as a boolean; only fusion (the
HTSAT-tiny ``630k-audioset-fusion-best.pt`` checkpoint the released EnCLAP models were
trained with) is supported, and asking for False is refused with a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: import from the repository root, not data/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from data import preprocess

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def parse_bool(text: str) -> bool:
    """Parses True/False/1/0/yes/no (any case) as a boolean; argparse's ``type=bool`` cannot."""
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parses the original flags and runs :func:`data.preprocess.main`; returns its exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Unknown flags go to data/preprocess.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_path", "-d", required=True, help="folder of audio files (recursive)")
    parser.add_argument("--save_path", "-s", required=True, help="output root of the CLAP .npy tree")
    parser.add_argument("--clap_ckpt", "-c", default=None,
                        help="LAION-CLAP checkpoint 630k-audioset-fusion-best.pt (not needed with --random_weights)")
    parser.add_argument("--enable_fusion", "-e", type=parse_bool, default=True,
                        help="feature fusion; only True (the fusion checkpoint) is supported")
    parser.add_argument("--audio_encoder", "-a", default="HTSAT-tiny",
                        help="CLAP audio encoder; only HTSAT-tiny is supported")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    args, rest = parser.parse_known_args(argv)
    if not args.enable_fusion:
        print("error: --enable_fusion False is not supported: EnCLAP uses the fusion checkpoint "
              "630k-audioset-fusion-best.pt (HTSAT-tiny, fusion on); drop the flag or pass True", file=sys.stderr)
        return 2
    if args.audio_encoder != "HTSAT-tiny":
        print(f"error: --audio_encoder {args.audio_encoder} is not supported: EnCLAP uses HTSAT-tiny "
              "(630k-audioset-fusion-best.pt); drop the flag", file=sys.stderr)
        return 2
    forwarded = ["--data_path", args.data_path, "--clap_path", args.save_path, "--device", args.device,
                 "--skip_encodec"]
    if args.clap_ckpt is not None:
        forwarded += ["--clap_ckpt", args.clap_ckpt]
    return preprocess.main([*forwarded, *rest])


if __name__ == "__main__":
    sys.exit(main())
