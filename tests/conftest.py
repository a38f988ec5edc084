"""Fixtures shared by the tests of files and checkpoints: the ids of a finished process and of a running one."""

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
