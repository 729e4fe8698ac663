"""Feature reads per epoch: one ``.npy`` per clip and kind (design §5) against the packed store.

    python benchmarks/feature_store.py                  # 20 000 clips of 750 frames, ~2.5 GB in a temp folder
    python benchmarks/feature_store.py --clips 2000 --keep --workdir /scratch/x

Writes the same synthetic clips (codes (750, 16), CLAP (512,)) both ways, then reads one epoch
through :class:`data.training.dataset.CaptionDataset` (evaluation mode: the whole clip, checked and copied,
as validation and ``evaluate.py --from_preprocessed`` read it) in one shuffled order, per layout:

* **cold**: the page cache is emptied of the benchmark's files first with
  ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every file (no root needed; the drop shows in
  ``/proc/meminfo``'s ``Cached``). Pages only leave the cache when nothing maps them, so each
  cold run starts in a fresh dataset object.
* **warm**: the same epoch again with everything cached: what is left is the per-clip cost of
  opening files (per-file) versus slicing an open memory map (packed).

Printed per run: files opened (``open`` calls counted; ``np.load`` with a memory map opens a file
three times), bytes of the arrays read (the ``.npy``
files' sizes for per-file; header-free slices for packed), bytes the kernel fetched from storage
(``read_bytes`` of ``/proc/self/io``) and clips/s. The last line is ``speedup: N.NN``, packed
over per-file clips/s on the cold epoch (the case of a cluster file system).
"""

from __future__ import annotations

import argparse
import builtins
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.constants import MAX_FRAMES  # noqa: E402
from data.extraction import store  # noqa: E402
from data.training.dataset import CaptionDataset  # noqa: E402

FRAMES, RVQ, CLAP_DIM = 750, 16, 512


def write_both(root: Path, clips: int, seed: int = 0) -> Path:
    """The same synthetic clips as two ``.npy`` trees and as a packed store; returns the CSV."""
    rng = np.random.default_rng(seed)
    writer = store.PackedWriter(root / "packed", "bench")
    names = []
    for i in tqdm(range(clips), desc="writing both layouts", unit="clip"):
        name = f"split{i % 10}/clip_{i:06d}.npy"
        codes = rng.integers(0, 1024, (FRAMES, RVQ), dtype=np.int64)
        clap = rng.standard_normal(CLAP_DIM).astype(np.float32)
        for kind, array in (("enc", codes), ("clap", clap)):
            path = root / kind / name
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, array)
        writer.add(name, codes, clap)
        names.append(name)
    writer.flush()
    store.build_index(root / "packed")
    csv_path = root / "split.csv"
    csv_path.write_text("file_path,caption_1\n" + "".join(f"{n},a sound\n" for n in names))
    return csv_path


def evict(folder: Path) -> None:
    """Drops ``folder``'s files from the page cache (clean pages of unmapped files)."""
    os.sync()  # freshly written pages are dirty, and dirty pages are not dropped
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cached_kib() -> int:
    with open("/proc/meminfo") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("Cached:"))


def storage_bytes() -> int:
    with open("/proc/self/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("read_bytes:"))


def epoch(dataset: CaptionDataset, order) -> dict:
    """Reads ``order`` once; returns files opened, storage bytes, seconds."""
    opened = [0]
    real_open = builtins.open

    def counting_open(*args, **kwargs):
        opened[0] += 1
        return real_open(*args, **kwargs)

    builtins.open = counting_open  # np.load opens through the builtin
    before, start = storage_bytes(), time.perf_counter()
    try:
        total = 0
        for i in order:
            total += int(dataset[i]["codes"][0, 0])  # touch the result
    finally:
        builtins.open = real_open
    seconds = time.perf_counter() - start
    return {"opened": opened[0], "storage": storage_bytes() - before, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=20000, help="synthetic clips (default: 20000)")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written files")
    parser.add_argument("--seed", type=int, default=0, help="shuffle and data seed")
    args = parser.parse_args(argv)

    root = Path(args.workdir or tempfile.mkdtemp(prefix="enclap-store-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        csv_path = write_both(root, args.clips, args.seed)
        order = np.random.default_rng(args.seed + 1).permutation(args.clips).tolist()
        per_clip = {
            "per-file": (os.path.getsize(root / "enc" / "split0" / "clip_000000.npy")
                         + os.path.getsize(root / "clap" / "split0" / "clip_000000.npy")),
            "packed": FRAMES * RVQ * np.dtype(store.CODES_DTYPE).itemsize + CLAP_DIM * 4,
        }
        layouts = {"per-file": (root / "enc", root / "clap"), "packed": (root / "packed", root / "packed")}
        rates: dict = {}
        print(f"{args.clips} clips of ({FRAMES}, {RVQ}) codes + ({CLAP_DIM},) embedding; one shuffled epoch each; "
              f"{os.cpu_count()} CPU(s)")
        print(f"{'layout':9} {'cache':5} {'files opened':>12} {'array bytes':>12} {'from storage':>13} {'clips/s':>9}")
        for cache in ("cold", "warm"):
            for layout, roots in layouts.items():
                dataset = CaptionDataset(str(csv_path), *map(str, roots), train=False, max_frames=MAX_FRAMES,
                                         check_files=False)
                if cache == "cold":
                    cached = cached_kib()
                    evict(root / ("packed" if layout == "packed" else ""))
                    dropped = (cached - cached_kib()) / 1024
                else:
                    epoch(dataset, order)  # fill the cache (and this dataset's maps)
                    dropped = None
                result = epoch(dataset, order)
                rate = args.clips / result["seconds"]
                rates[(layout, cache)] = rate
                note = f"   (page cache {-dropped:+.0f} MiB before)" if dropped is not None else ""
                print(f"{layout:9} {cache:5} {result['opened']:12d} {per_clip[layout] * args.clips / 2**20:9.0f} MiB "
                      f"{result['storage'] / 2**20:9.0f} MiB {rate:9.0f}{note}")
                del dataset
        print(f"warm speedup: {rates[('packed', 'warm')] / rates[('per-file', 'warm')]:.2f}")
        print(f"speedup: {rates[('packed', 'cold')] / rates[('per-file', 'cold')]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
