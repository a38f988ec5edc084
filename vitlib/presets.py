"""Named training recipes, each a small readable config.

`seed` is the seed notebook's recipe as it actually ran (its StepLR was never stepped, so the
learning rate stayed 3e-5). `cpu` is what a 2-core laptop can train in about 15 minutes, and
`cpu-full` the same with full attention, for comparison. `gpu` is the recipe for a CUDA GPU
(not yet measured on one). `sample` runs in seconds on the synthetic sample for CI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import pandas as pd

from .augment import AugmentConfig
from .models import SEED, ModelConfig


@dataclass(frozen=True)
class Preset:
    name: str
    about: str
    model: ModelConfig
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"  # or "adam"
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # linear warm-up then cosine decay to 0; or "constant"
    label_smoothing: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    grad_clip: float | None = 1.0
    tta: bool = True  # average the prediction of the image and its mirror image
    val_fraction: float = 0.2
    split_seed: int = 42  # the split is fixed by this, whatever the training seed
    seed: int = 0

    def replace(self, **changes) -> Preset:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preset:
        d = dict(d)
        d["model"] = ModelConfig(**d["model"])
        aug = dict(d["augment"])
        aug["scale"], aug["ratio"] = tuple(aug["scale"]), tuple(aug["ratio"])
        d["augment"] = AugmentConfig(**aug)
        return cls(**d)


PRESETS = {
    "sample": Preset(
        name="sample",
        about="seconds on a CPU, for CI and the synthetic sample",
        model=ModelConfig(image_size=32, patch_size=8, dim=64, depth=2, heads=4, k=16, pos_init_std=0.02),
        epochs=10, batch_size=16, lr=2e-3, warmup_epochs=0.5,
        augment=AugmentConfig(scale=(0.7, 1.0)),
    ),
    "cpu": Preset(
        name="cpu",
        about="a 2-core laptop CPU, about 15 minutes",
        model=ModelConfig(image_size=64, patch_size=8, dim=128, depth=6, heads=8, k=64, pos_init_std=0.02,
                          kv_init="identity"),
        epochs=20, batch_size=128, lr=1e-3,
        augment=AugmentConfig(scale=(0.7, 1.0)),
    ),
    "seed": Preset(
        name="seed",
        about="the seed notebook's recipe as it ran: Adam 3e-5 constant, batch 64, 20 epochs",
        model=SEED,
        epochs=20, batch_size=64, lr=3e-5, optimizer="adam", weight_decay=0.0, warmup_epochs=0.0,
        schedule="constant", label_smoothing=0.0, grad_clip=None, tta=False, seed=42,
        augment=AugmentConfig(scale=(0.08, 1.0)),
    ),
    "gpu": Preset(
        name="gpu",
        about="one CUDA GPU, a few minutes",
        model=ModelConfig(image_size=128, patch_size=8, dim=192, depth=8, heads=6, k=64, pos_init_std=0.02),
        epochs=60, batch_size=256, lr=1e-3,
        augment=AugmentConfig(scale=(0.35, 1.0), saturation=0.2, mixup=0.2, cutmix=1.0),
    ),
}


PRESETS["cpu-full"] = PRESETS["cpu"].replace(
    name="cpu-full",
    about="the cpu preset with full softmax attention instead of Linformer: for comparison, and for Recorder",
    model=PRESETS["cpu"].model.replace(attention="full", kv_init="uniform"),
)


def get_preset(name: str, **changes) -> Preset:
    try:
        preset = PRESETS[name]
    except KeyError:
        raise KeyError(f"No preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    return preset.replace(**changes) if changes else preset


def compare(*names: str) -> pd.DataFrame:
    """The presets side by side, one row per setting (model and augmentation settings flattened)."""
    cols = {}
    for name in names:
        d = get_preset(name).to_dict()
        flat = {k: v for k, v in d.items() if k not in ("model", "augment", "name", "about")}
        flat.update({f"model.{k}": v for k, v in d["model"].items()})
        flat.update({f"augment.{k}": v for k, v in d["augment"].items()})
        cols[name] = {k: str(v) for k, v in flat.items()}
    return pd.DataFrame(cols)
