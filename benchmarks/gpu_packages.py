"""What benchmarks/gpu_check.sh needs, checked before it runs anything: one line per package that
does not import, with the import's own error (a CUDA build of torch that cannot load its libraries
says why) and what to install; exit status 5 when any is missing.

    python benchmarks/gpu_packages.py
"""

from __future__ import annotations

import importlib
import os
import re
import sys

REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements-gpu.txt")
# Our modules the benchmarks import, checked once the packages are there (their own imports).
OURS = ("modeling", "data.training.dataset", "data.training.collator", "training.optim", "captioning.pipeline")


def problem(module: str, fix: str) -> str | None:
    """None when ``module`` imports, else one line: the module, its error and ``fix``."""
    try:
        importlib.import_module(module)
    except Exception as error:  # ImportError, or a broken build's own error (OSError, RuntimeError)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"gpu_check.sh: missing package: {module} ({type(error).__name__}: {first}); {fix}"
    return None


def requirements(path: str = REQUIREMENTS) -> list[tuple[str, str]]:
    """``(module, pip requirement)`` of every line of the GPU requirements file."""
    found = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            spec = line.split("#")[0].strip()
            if spec:
                found.append((re.split(r"[=<>!~ \[]", spec)[0].replace("-", "_"), spec))
    return found


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    torch_problem = problem("torch", "install a CUDA build of torch (https://pytorch.org/get-started/locally/)")
    if torch_problem:  # the other packages import torch: their lines would repeat its error
        print(torch_problem)
        return 5
    import torch

    lines = [problem("torchaudio", f"install the torchaudio build that matches torch {torch.__version__} "
                                   "(from the index torch came from)")]
    lines += [problem(module, f"pip install '{spec}' (or: sh benchmarks/gpu_check.sh --install)")
              for module, spec in requirements()]
    lines = [line for line in lines if line]
    if not lines:
        lines = [line for line in (problem(m, "its error names what is missing") for m in OURS) if line]
    for line in lines:
        print(line)
    return 5 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
