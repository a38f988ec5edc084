"""vitlib: the code behind a notebook series that teaches Vision Transformers on Dogs vs Cats.

One module per concept, in the order the notebooks teach them; a module imports only those before it:
    helpers: files, settings (the notebooks' configuration cell), device, plots
    01: download, sample, extract, data, cache, explore, metrics
    02: patches, models
    03: attention, attention_cost
    04: augment, presets, checkpoints, distributed, train, bench
    05: distill, small_data
    06: calibration, submit, own_photos
    07: family, occlusion, scratch (the ViT and loop written from scratch)
    the command line: cli
(tests/test_structure.py holds the exact order.)
"""

__version__ = "0.1.0"

from .settings import configure as configure  # noqa: E402 (every notebook's configuration cell: vitlib.configure)


def about(ds=None) -> str:
    """One line naming what produced a notebook's outputs: versions, device and data."""
    import torch

    from .device import describe_device, pick_device

    line = f"vitlib {__version__} | torch {torch.__version__} | {describe_device(pick_device())}"
    if ds is not None:
        line += f" | data: {ds.describe()}"
    print(line)
    return line
