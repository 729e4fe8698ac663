"""Loaded by every Python process that benchmarks/gpu_check.sh's sync-debug pass starts (this folder
is put first on PYTHONPATH): turns on torch's sync-debug mode and writes the place of every
synchronizing CUDA call, one ``<pipeline>\t<file>:<line>`` per call, to ``$ENCLAP_SYNC_LOG``.
Does nothing without that variable."""

import os
import sys
import warnings

if os.environ.get("ENCLAP_SYNC_LOG"):
    import torch

    def _record(message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" in str(message):
            which = sys.argv[sys.argv.index("--child") + 1] if "--child" in sys.argv else "main"
            with open(os.environ["ENCLAP_SYNC_LOG"], "a", encoding="utf-8") as handle:
                handle.write(f"{which}\t{os.path.relpath(filename)}:{lineno}\n")

    warnings.showwarning = _record
    warnings.simplefilter("always")  # every call, not once per place
    torch.cuda.set_sync_debug_mode("warn")
