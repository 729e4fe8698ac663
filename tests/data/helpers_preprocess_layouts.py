"""One process's share of an audio tree in both feature layouts: data/preprocess.py's command line run twice.

    accelerate launch ... tests/data/helpers_preprocess_layouts.py DATA_PATH OUT [more preprocess flags]

writes this process's share of DATA_PATH into the per-file trees OUT/enc and OUT/clap (the share that
RANK/WORLD_SIZE give, as for ``accelerate launch data/preprocess.py``), then into the packed store OUT/store
(the share that ``--shard RANK/WORLD_SIZE`` gives, two clips per shard file). Exits with the first nonzero status.

tests/data/test_preprocess.py launches it: one process writing both layouts pays once for the imports and
encoders that dominate a tiny run, where a separate process per layout would pay twice.
"""

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from data import preprocess  # noqa: E402


def main(argv) -> int:
    data_path, out, *flags = argv
    share = f"{os.environ.get('RANK', '0')}/{os.environ.get('WORLD_SIZE', '1')}"
    base = ["--data_path", data_path, *flags]
    return (preprocess.main([*base, "--encodec_path", f"{out}/enc", "--clap_path", f"{out}/clap"])
            or preprocess.main([*base, "--pack", f"{out}/store", "--pack_shard_clips", "2", "--shard", share]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
