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


@pytest.mark.parametrize("cap, native, crashes", [
    ("", True, False), ("avx512_core_bf16", True, False), ("AVX512_CORE_AMX", True, False),
    ("AVX512_CORE", False, False), ("avx2", False, True), ("SSE41", False, True)])
def test_onednn_held_below_bfloat16_means_no_native_bfloat16(cpuinfo, monkeypatch, cap, native, crashes):
    cpuinfo(SAPPHIRE)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert cpu.onednn_cap() == cap.upper()
    assert cpu.has_bfloat16_matmul() is native
    assert cpu.bfloat16_matmul_crashes() is crashes
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # no oneDNN kernels: the cap holds nothing back
    assert cpu.onednn_cap() == "" and cpu.has_bfloat16_matmul() and not cpu.bfloat16_matmul_crashes()


def test_the_older_variable_counts_and_oneDNN_off_by_default_holds_nothing(cpuinfo, monkeypatch):
    cpuinfo(SAPPHIRE)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "")  # unset or empty: oneDNN reads DNNL_MAX_CPU_ISA
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx2")
    assert cpu.onednn_cap_setting() == ("DNNL_MAX_CPU_ISA", "AVX2") and cpu.bfloat16_matmul_crashes()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")  # the newer one wins
    assert cpu.onednn_cap_setting() == ("ONEDNN_MAX_CPU_ISA", "ALL") and not cpu.bfloat16_matmul_crashes()
    # An AVX-512 CPU without VNNI or bfloat16 (Skylake): TensorFlow runs no oneDNN kernels unless told to
    cpuinfo("processor\t: 0\nflags\t: avx2 fma avx512f\n")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu.onednn_cap() == "" and not cpu.bfloat16_matmul_crashes()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert cpu.onednn_cap() == "AVX2" and cpu.bfloat16_matmul_crashes()


def test_an_avx2_cpu_held_to_avx2_does_not_crash_in_bfloat16(cpuinfo, monkeypatch):
    cpuinfo(AVX2)  # TensorFlow does not send its bfloat16 products to oneDNN there
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert not cpu.has_bfloat16_matmul() and not cpu.bfloat16_matmul_crashes()
