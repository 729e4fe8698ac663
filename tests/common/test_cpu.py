"""common/cpu.py: the CPU line the benchmarks print next to their figures."""

from __future__ import annotations

import torch

from common import cpu

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Test Xeon 9999
flags\t\t: fpu sse2 avx2 fma avx512f amx_tile amx_bf16

processor\t: 1
model name\t: Another Name
flags\t\t: fpu
"""


def test_the_line_names_the_model_its_flags_the_kernels_and_threads(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    monkeypatch.setattr(cpu, "CPUINFO", str(info))
    assert cpu.cpu_model() == "Test Xeon 9999"
    assert {"avx2", "amx_tile", "avx512f"} <= cpu.cpu_flags() and "Another" not in cpu.cpu_flags()
    line = cpu.describe_cpu(threads=3)
    assert line.startswith("CPU: Test Xeon 9999, ")
    assert "flags avx2 fma avx512f amx_bf16 amx_tile (no avx512_vnni avx512_bf16)" in line
    assert f"torch {torch.__version__}" in line and "BLAS " in line and line.endswith("; 3 threads")
    assert cpu.describe_cpu().endswith(f"; {torch.get_num_threads()} threads")


def test_without_proc_cpuinfo_the_line_still_comes(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "CPUINFO", str(tmp_path / "missing"))
    assert cpu.cpu_flags() == set()
    line = cpu.describe_cpu()
    assert cpu.cpu_model() in line and "flags none of avx2" in line


def test_native_bf16_follows_the_flags(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu, "CPUINFO", str(info))
    for flags, native in (("avx2 avx512f", False), ("avx512f avx512_bf16", True), ("avx2 amx_bf16", True)):
        info.write_text(f"model name\t: X\nflags\t\t: {flags}\n")
        assert cpu.native_bf16() is native, flags
