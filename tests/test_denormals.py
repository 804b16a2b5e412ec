"""Flushing subnormal floats reaches every intra-op thread, and turns off again."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fn_trainer.speed import denormals

ROOT = Path(__file__).resolve().parents[1]
# Run in a child process: the mode belongs to the process's threads, and the child
# starts with two intra-op threads whatever this machine has.
CHILD = textwrap.dedent("""
    import torch
    from fn_trainer.speed.denormals import denormals_flushed, flush_denormals
    torch.set_num_threads(2)
    x = torch.full((1 << 20,), 1e-40)  # subnormal float32, made before any flushing
    assert bool((x != 0).all())
    flushed = lambda: int(((x * 2) == 0).sum())  # one parallel op over both threads
    print(flushed())
    torch.set_flush_denormal(True)  # the calling thread only
    print(flushed())
    torch.set_flush_denormal(False)
    print(flush_denormals(True), flushed(), denormals_flushed())
    print(flush_denormals(False), flushed(), denormals_flushed())
""")


def run_child() -> list:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.split()


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"),
                    reason="flush-to-zero is checked on x86 only")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="every thread reached with GNU OpenMP only")
def test_flush_reaches_every_thread_and_turns_off_again():
    n = 1 << 20
    before, calling_thread_only, *rest = run_child()
    assert int(before) == 0
    # torch's own switch leaves the other thread's share of the product subnormal
    assert 0 < int(calling_thread_only) < n
    assert rest == ["True", str(n), "True", "True", "0", "False"]


def test_enabled_must_be_a_bool():
    with pytest.raises(TypeError, match="enabled must be a bool"):
        denormals.flush_denormals(1)


def test_denormals_flushed_reads_the_calling_thread():
    assert denormals.denormals_flushed() is False  # torch's default, and this suite never leaves it on
