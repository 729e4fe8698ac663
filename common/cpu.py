"""Which CPU this process runs on, in the words a benchmark figure needs next to it.

Speed on a CPU depends on the kernels torch picks for it (MKL, oneDNN, its own vectorised code)
and on the instruction sets the CPU has, so the benchmarks print this line with their figures.
"""

from __future__ import annotations

import platform
import re

import torch

CPUINFO = "/proc/cpuinfo"

#: Instruction-set flags (as Linux names them in /proc/cpuinfo) that decide which kernels run.
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    if fields:
                        break  # one processor is enough: they are alike
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows where that is missing."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags as Linux names them (empty where /proc/cpuinfo is missing)."""
    return set(_cpuinfo().get("flags", "").split())


def torch_kernels() -> str:
    """torch's CPU kernel libraries: its vector capability, BLAS, MKL and oneDNN versions."""
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    onednn = re.search(r"MKL-DNN (v[\w.]+)", config)
    parts = [f"torch {torch.__version__}", f"CPU capability {torch.backends.cpu.get_cpu_capability()}",
             f"BLAS {blas.group(1) if blas else 'unknown'}"]
    parts.append(f"MKL {mkl.group(1)}" if mkl and torch.backends.mkl.is_available() else "no MKL")
    parts.append(f"oneDNN {onednn.group(1)}" if onednn and torch.backends.mkldnn.is_available() else "no oneDNN")
    return ", ".join(parts)


def describe_cpu(threads: int | None = None) -> str:
    """One line: model, the flags of :data:`FLAGS_OF_INTEREST` it has and lacks, kernels, threads.

    Args:
        threads: the intra-op thread count the measurement runs with (default: this process's).
    """
    flags = cpu_flags()
    have = [flag for flag in FLAGS_OF_INTEREST if flag in flags]
    lacks = [flag for flag in FLAGS_OF_INTEREST if flag not in flags]
    flag_text = " ".join(have) or "none of " + " ".join(FLAGS_OF_INTEREST)
    if have and lacks:
        flag_text += " (no " + " ".join(lacks) + ")"
    return (f"CPU: {cpu_model()}, {platform.machine()}; flags {flag_text}; {torch_kernels()}; "
            f"{threads or torch.get_num_threads()} threads")


def native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
