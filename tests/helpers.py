"""Small helpers several test files share, called directly: `from helpers import jpeg, make_zip` (pyproject.toml
puts tests/ on pytest's sys.path). Fixtures live in conftest.py."""

import errno
import io
import os
import zipfile
from pathlib import Path

from PIL import Image


def jpeg(color=(200, 80, 40), size=(12, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def make_zip(path: Path, files: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return path


def train_files(n_per_class=3, folder="train") -> dict:
    return {f"{folder}/{name}.{i}.jpg": jpeg((40 + 60 * label, 90, 120)) for label, name in enumerate(("cat", "dog"))
            for i in range(n_per_class)}


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*"))


def no_space(code=errno.ENOSPC) -> OSError:
    return OSError(code, os.strerror(code))


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if p.name.endswith(".tmp") or ".partial" in p.name)
