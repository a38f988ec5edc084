"""vitlib: the code behind a notebook series that teaches Vision Transformers on Dogs vs Cats.

One module per concept, in the order the notebooks teach them: download, data, sample, cache,
patches, models, attention, augment, presets, metrics, train, submit, plots, cli.
"""

__version__ = "0.1.0"


def about(ds=None) -> str:
    """One line naming what produced a notebook's outputs: versions, device and data."""
    import torch

    from .train import describe_device, pick_device

    line = f"vitlib {__version__} | torch {torch.__version__} | {describe_device(pick_device())}"
    if ds is not None:
        line += f" | data: {ds.describe()}"
    print(line)
    return line
