"""The training process's CPU allocator settings (src/utils/allocator.py): applied before torch
loads, inherited by child processes, and glibc block reuse actually taking effect."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.utils.allocator import ALLOCATORS, allocator_environment, check_allocator_name

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_"))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_train_script_leaves_torch_unloaded_until_main_has_configured_the_allocator():
    out = run_python(
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('train_script', 'src/train.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('torch' in sys.modules)")
    assert out == "False"


def test_each_allocator_sets_its_own_variables_and_unknown_names_fail():
    assert allocator_environment("default") == {}
    assert allocator_environment("thp") == {"THP_MEM_ALLOC_ENABLE": "1"}
    assert set(allocator_environment("reuse")) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
    assert set(allocator_environment("thp_reuse")) == {"THP_MEM_ALLOC_ENABLE", *allocator_environment("reuse")}
    assert set(ALLOCATORS) == {"default", "thp", "reuse", "thp_reuse"}
    with pytest.raises(ValueError, match=r"allocator='huge'.*conf/train.yaml"):
        check_allocator_name("huge")


# Page faults while computing with 64 MB tensors: with glibc's defaults every result is mapped
# fresh and faulted in 4 KB at a time; `reuse` serves most of them from freed heap blocks, `thp`
# faults them in 2 MB at a time.
FAULTS_OF_TEN_STEPS = (
    "import resource\n"
    "from src.utils.allocator import configure_allocator\n"
    "configure_allocator('{name}')\n"
    "import torch\n"
    "x = torch.ones(16 * 2**20)\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "for _ in range(10):\n"
    "    y = x * 2.0; z = y + 1.0; del y, z\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")


def page_faults(name: str) -> int:
    return int(run_python(FAULTS_OF_TEN_STEPS.format(name=name)))


@pytest.fixture(scope="module")
def default_faults() -> int:
    faults = page_faults("default")
    if faults < 40_000:  # 20 results x 16k pages of 4 KB, unless the kernel already uses huge pages
        pytest.skip(f"this kernel maps large blocks with huge pages already ({faults} faults)")
    return faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_reuse_serves_freed_blocks_again_with_fewer_page_faults(default_faults):
    assert page_faults("reuse") < default_faults / 2


def transparent_huge_pages_available() -> bool:
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return setting.exists() and "[never]" not in setting.read_text()


@pytest.mark.skipif(not transparent_huge_pages_available(), reason="kernel without transparent huge pages")
def test_thp_backs_large_tensors_with_huge_pages(default_faults):
    assert page_faults("thp") < default_faults / 2


def test_configured_variables_reach_child_processes_and_the_user_setting_wins():
    code = ("import os, subprocess, sys\n"
            "from src.utils.allocator import configure_allocator\n"
            "configure_allocator('thp_reuse')\n"
            "print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"MALLOC_MMAP_THRESHOLD_\"), "
            "os.environ.get(\"THP_MEM_ALLOC_ENABLE\"))'], capture_output=True, text=True).stdout.strip())\n")
    assert run_python(code) == f"{1 << 30} 1"
    assert run_python(code, THP_MEM_ALLOC_ENABLE="0") == f"{1 << 30} 0"


def test_a_second_setting_in_the_same_process_is_refused_with_a_warning():
    code = ("import logging, os\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "from src.utils.allocator import configure_allocator\n"
            "configure_allocator('thp')\n"
            "configure_allocator('reuse')\n"
            "print(os.environ.get('MALLOC_MMAP_THRESHOLD_'))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_"))},
                               "PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip() == "None"
    assert "allocator=reuse ignored: this process already runs with allocator=thp" in proc.stderr


class CappedGlibc:
    """glibc's mallopt as older releases answer it: an mmap threshold above `cap` is refused
    (HEAP_MAX_SIZE / 2, 32 MiB on 64-bit), every other setting taken."""

    def __init__(self, cap: int):
        self.cap, self.calls = cap, []

    def mallopt(self, param, value) -> int:
        self.calls.append((param, value.value))
        return 0 if param == -3 and value.value > self.cap else 1


@pytest.mark.parametrize("cap", [32 << 20, 0])
def test_reuse_on_a_glibc_that_caps_the_mmap_threshold(monkeypatch, caplog, cap):
    """The threshold falls back to the cap (for this process and its children). Where even that is
    refused, nothing is applied: a trim threshold alone would freeze glibc's dynamic mmap
    threshold at 128 KiB, mapping more blocks fresh than its default."""
    from src.utils import allocator
    libc = CappedGlibc(cap)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda path: libc)
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(os, "environ", {})   # the variables configure_allocator sets stay in this test
    allocator.configure_allocator("reuse")
    if cap:
        assert libc.calls == [(-3, 1 << 30), (-3, cap), (-1, (1 << 31) - 1)]
        assert os.environ == {"MALLOC_MMAP_THRESHOLD_": str(cap), "MALLOC_TRIM_THRESHOLD_": str((1 << 31) - 1)}
        assert f"using {cap}" in caplog.text
    else:
        assert libc.calls == [(-3, 1 << 30), (-3, 32 << 20)]
        assert os.environ == {} and "allocator 'reuse' is not applied" in caplog.text
        monkeypatch.setattr(allocator, "_applied", None)
        allocator.configure_allocator("thp_reuse")   # the huge pages stay
        assert os.environ == {"THP_MEM_ALLOC_ENABLE": "1"}
