"""Fixtures shared by several test files: the ids of a finished process and of a running one, and the C++ compiler
torch.compile needs on a CPU."""

import os
import shutil
import subprocess
import sys

import pytest


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    """The id of a process that runs for the whole test."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child.pid
    child.kill()
    child.wait()


@pytest.fixture(scope="session")
def inductor_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend (inductor) builds its kernels with, where this machine has it:
    $CXX, else g++ (clang++ on macOS), as torch._inductor.config.cpp.cxx names it; None without one. Inductor tries
    no other name (not c++, cc or clang++ on Linux), so neither does this."""
    return shutil.which(os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++"))
