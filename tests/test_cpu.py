"""textgen.cpu reads the first processor's model and flags from a cpuinfo file."""

import pytest

from textgen import cpu

AVX2 = ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 fma avx2 bmi2\n\n"
        "processor\t: 1\nflags\t: avx512_bf16\n")
SAPPHIRE = ("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel Xeon\n"
            "flags\t: avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n")


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    def write(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(cpu, "CPUINFO", str(path))
        cpu._cpuinfo.cache_clear()

    yield write
    cpu._cpuinfo.cache_clear()


def test_an_avx2_cpu_has_no_native_bfloat16(cpuinfo):
    cpuinfo(AVX2)
    assert cpu.cpu_model() == "AMD EPYC"
    assert "bmi2" in cpu.cpu_flags() and "avx512_bf16" not in cpu.cpu_flags()  # only the first processor counts
    assert cpu.matmul_flags() == "fma avx2"
    assert cpu.has_bfloat16_matmul() is False


def test_a_bfloat16_cpu_lists_its_matmul_flags_in_a_fixed_order(cpuinfo):
    cpuinfo(SAPPHIRE)
    assert cpu.cpu_model() == "Intel Xeon (family 6, model 143)"
    assert cpu.matmul_flags() == "fma avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
    assert cpu.has_bfloat16_matmul() is True


def test_no_cpuinfo_means_no_flags(cpuinfo, monkeypatch):
    cpuinfo("")
    monkeypatch.setattr(cpu, "CPUINFO", "/nonexistent/cpuinfo")
    cpu._cpuinfo.cache_clear()
    assert cpu.cpu_flags() == frozenset()
    assert cpu.matmul_flags() == "none of fma/avx2/avx512/amx"
    assert cpu.has_bfloat16_matmul() is False
