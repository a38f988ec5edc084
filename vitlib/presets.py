"""Named training recipes, each a small readable config.

`seed` is the seed notebook's recipe as it actually ran (its StepLR was never stepped, so the learning
rate stayed 3e-5). `cpu` is the best a 2-core CPU trains in about 15 minutes (chosen by the ablation and the
search in notebook 05), `cpu-long` the same model for about an hour, with wider crops; `cpu-plain` is the plain
ViT notebooks 02 and 03 look inside (one linear map per patch, as the seed), and `cpu-full` the same
with full attention, for comparison. `gpu` is the recipe for a CUDA GPU (not yet measured on one).
`sample` runs in seconds on the synthetic sample for CI.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace

import pandas as pd
import torch

from .augment import AugmentConfig
from .data import SPLIT_SEED, VAL_FRACTION, DogsVsCats
from .device import memory_bytes
from .models import (
    MAX_IMAGE_SIZE,
    SEED_NOTEBOOK_MODEL,
    TRAINING_BYTES_PER_PARAMETER,
    ModelConfig,
    estimated_activation_bytes,
    estimated_parameters,
    finite_number,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class PresetError(ValueError):
    """A recipe setting out of its range; the one-line message names the setting and the range."""


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
    cache_size: int | None = None  # px the training photos are cached at, when larger than model.image_size: each
    # crop is then resampled down to image_size (sharper than a crop of a cache at image_size, blown up);
    # validation and test photos stay cached at image_size. None: image_size
    grad_clip: float | None = 1.0
    tta: bool = True  # average the prediction of the image and its mirror image
    val_fraction: float = VAL_FRACTION
    split_seed: int = SPLIT_SEED  # the split is fixed by this, whatever the training seed
    seed: int = 0
    train_images: int | None = None  # train on this many of the split's training photos (half of each class, nested:
    # data.nested_subset), for the data curve; validation keeps all of its photos. None: all
    teacher: str | None = None  # DeiT distillation (vitlib.distill): the teacher's checkpoint, a committed model's
    # kind ("cnn") or a path; the model needs a distillation token (model.distill). None: no teacher
    ema: float | None = None  # the decay of an exponential moving average of the weights, updated after every step
    # (0.998: about the last 500 steps); the average is what is validated, saved as the model and predicted with.
    # None: the weights as trained

    def __post_init__(self):
        """Refuse a setting out of range here, where every preset is made, before anything is written."""
        _check("name", self.name, isinstance(self.name, str) and _NAME.fullmatch(self.name) is not None,
               "a plain name of letters, digits, '.', '_' and '-' (it names the run folder: runs/<name>-<data>)")
        for name in ("epochs", "batch_size"):
            _check(name, getattr(self, name), _whole(getattr(self, name)) and getattr(self, name) >= 1,
                   "a whole number >= 1")
        for name in ("seed", "split_seed"):  # torch and numpy take seeds below 2**32 (numpy) or 2**63 (torch)
            _check(name, getattr(self, name), _whole(getattr(self, name)) and 0 <= getattr(self, name) < 2**32,
                   "a whole number from 0 to 4294967295")
        _check("lr", self.lr, finite_number(self.lr) and self.lr > 0, "a number > 0 (e.g. 1e-3)")
        _check("weight_decay", self.weight_decay, finite_number(self.weight_decay) and self.weight_decay >= 0,
               "a number >= 0")
        _check("warmup_epochs", self.warmup_epochs, finite_number(self.warmup_epochs) and 0 <= self.warmup_epochs
               and (not _whole(self.epochs) or self.warmup_epochs <= self.epochs),
               f"a number from 0 to the epochs ({self.epochs})")
        _check("cache_size", self.cache_size, self.cache_size is None or _whole(self.cache_size)
               and isinstance(self.model, ModelConfig) and self.model.image_size <= self.cache_size <= MAX_IMAGE_SIZE,
               f"None or a whole number from model.image_size ({getattr(self.model, 'image_size', '?')}) to "
               f"{MAX_IMAGE_SIZE}")
        _check("train_images", self.train_images, self.train_images is None or _whole(self.train_images)
               and self.train_images >= 2, "None or a whole number >= 2")
        _check("label_smoothing", self.label_smoothing, finite_number(self.label_smoothing)
               and 0 <= self.label_smoothing < 1, "a number in [0, 1)")
        _check("val_fraction", self.val_fraction, finite_number(self.val_fraction) and 0 < self.val_fraction < 1,
               "a number in (0, 1)")
        _check("ema", self.ema, self.ema is None or finite_number(self.ema) and 0 < self.ema < 1,
               "None or a decay between 0 and 1 (e.g. 0.998)")
        _check("grad_clip", self.grad_clip,
               self.grad_clip is None or finite_number(self.grad_clip) and self.grad_clip > 0, "None or a number > 0")
        _check("optimizer", self.optimizer, self.optimizer in ("adam", "adamw"), "'adam' or 'adamw'")
        _check("schedule", self.schedule, self.schedule in ("cosine", "constant"), "'cosine' or 'constant'")
        _check("model", self.model, isinstance(self.model, ModelConfig), "a ModelConfig")
        _check("teacher", self.teacher, self.teacher is None or isinstance(self.teacher, str) and self.teacher.strip(),
               "None or a checkpoint (a committed model's kind, such as 'cnn', or a path)")
        if (self.teacher is not None) != self.model.distill:
            raise PresetError("a teacher needs a student with a distillation token, and the token needs a teacher: set "
                              "both teacher and model.distill=true, or neither"
                              f" (teacher={self.teacher!r}, model.distill={self.model.distill})")
        _check("augment", self.augment, isinstance(self.augment, AugmentConfig), "an AugmentConfig")

    @property
    def train_size(self) -> int:
        """The size (px) the training photos are cached at: cache_size, or the model's image_size."""
        return self.cache_size or self.model.image_size

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


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise PresetError(f"{name} must be {allowed}, not {value!r}")


PRESETS = {
    "sample": Preset(
        name="sample",
        about="seconds on a CPU, for CI and the synthetic sample",
        model=ModelConfig(image_size=32, patch_size=8, dim=64, depth=2, heads=4, k=16, pos_init_std=0.02),
        epochs=10, batch_size=16, lr=2e-3, warmup_epochs=0.5,
        augment=AugmentConfig(scale=(0.7, 1.0)),
    ),
    "cpu-plain": Preset(
        name="cpu-plain",
        about="the plain ViT (one linear map per patch) notebooks 02 and 03 look inside; 2-core CPU, 15-20 minutes",
        model=ModelConfig(image_size=64, patch_size=8, dim=128, depth=6, heads=8, k=64, pos_init_std=0.02,
                          kv_init="identity"),
        epochs=20, batch_size=128, lr=1e-3,
        augment=AugmentConfig(scale=(0.7, 1.0)),
    ),
    "cpu": Preset(
        name="cpu",
        about="a 2-core CPU, about 15 minutes: a conv stem makes 96 px photos 6x6 tokens, four heads of 32 dims, "
              "full attention, a depthwise convolution in each MLP, the tokens' mean for the answer (notebook 05)",
        model=ModelConfig(image_size=96, patch_size=16, dim=128, depth=6, heads=4, k=64, pos_init_std=0.02,
                          kv_init="uniform", stem="conv", attention="full", pool="mean", mlp="local"),
        epochs=21, batch_size=128, lr=1e-3,
        augment=AugmentConfig(scale=(0.7, 1.0)),
    ),
    "seed": Preset(
        name="seed",
        about="the seed notebook's recipe as it ran: Adam 3e-5 constant, batch 64, 20 epochs",
        model=SEED_NOTEBOOK_MODEL,
        epochs=20, batch_size=64, lr=3e-5, optimizer="adam", weight_decay=0.0, warmup_epochs=0.0,
        schedule="constant", label_smoothing=0.0, grad_clip=None, tta=False, seed=42,
        augment=AugmentConfig(scale=(0.08, 1.0)),
    ),
    "gpu-large": Preset(
        name="gpu-large",
        about="unmeasured: a larger ViT for one CUDA GPU (128 px, patch 8, MixUp/CutMix), a guess that no run has "
              "measured yet; benchmarks/gpu_check.py measures it when a GPU comes",
        model=ModelConfig(image_size=128, patch_size=8, dim=192, depth=8, heads=6, k=64, pos_init_std=0.02),
        epochs=60, batch_size=256, lr=1e-3,
        augment=AugmentConfig(scale=(0.35, 1.0), saturation=0.2, mixup=0.2, cutmix=1.0),
    ),
}


PRESETS["cpu-long"] = PRESETS["cpu"].replace(
    name="cpu-long",
    about="a 2-core CPU, about an hour: the cpu preset for 80 epochs, with crops of 35-100 % of the photo against "
          "overfitting (notebook 05's ablation)",
    epochs=80,
    augment=replace(PRESETS["cpu"].augment, scale=(0.35, 1.0)),
)

PRESETS["gpu"] = PRESETS["cpu-long"].replace(
    name="gpu",
    about="one CUDA GPU: the cpu-long recipe (0.917 validation accuracy on 2 CPU cores in 47 minutes, notebook 05); "
          "its time on a GPU is what benchmarks/gpu_check.py measures",
)

PRESETS["cpu-full"] = PRESETS["cpu-plain"].replace(
    name="cpu-full",
    about="cpu-plain with full softmax attention instead of Linformer: for comparison, and for Recorder",
    model=PRESETS["cpu-plain"].model.replace(attention="full", kv_init="uniform"),
)


def check_fits(preset: Preset) -> None:
    """Refuse (PresetError, one line naming the settings) a recipe whose training step would not fit in this
    machine's memory: the model's parameters with their gradients and optimiser state, and one batch's activations,
    estimated before anything is built or cached. Called where training starts (not when a preset is made: the
    shipped ones must load on any machine, even one too small to train the largest)."""
    memory = memory_bytes()
    need = (estimated_parameters(preset.model) * TRAINING_BYTES_PER_PARAMETER
            + estimated_activation_bytes(preset.model, preset.batch_size))
    if memory and need > 0.8 * memory:
        raise PresetError(f"training batches of {preset.batch_size} at {preset.model.image_size} px on a model of "
                          f"depth {preset.model.depth} and dim {preset.model.dim} needs about {need / 2**30:,.0f} GiB, "
                          f"more than this machine's {memory / 2**30:.0f} GiB: choose a smaller batch_size, "
                          "model.image_size, model.depth or model.dim")


def get_preset(name: str, **changes) -> Preset:
    """The preset `name`, with `changes` (e.g. epochs=5) applied and checked; a PresetError names a bad one."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise PresetError(f"no preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    unknown = sorted(set(changes) - set(preset.to_dict()))
    if unknown:
        raise PresetError(f"a preset has no setting {unknown[0]!r}; its settings: {', '.join(preset.to_dict())}")
    return preset.replace(**changes) if changes else preset


def with_settings(preset: Preset, settings: dict) -> Preset:
    """`preset` with dotted settings changed, e.g. {"lr": 5e-4, "model.stem": "conv", "augment.mixup": 0.2}.

    What `python -m vitlib train --set KEY=VALUE` uses, so that every variant of a recipe is one command.
    The result is checked like any preset; an unknown setting is a PresetError naming the ones there are.
    """
    d = preset.to_dict()
    for key, value in settings.items():
        *parts, leaf = key.split(".")
        where = d
        for part in parts:
            if not isinstance(where.get(part), dict):
                raise PresetError(f"a preset has no group {part!r} (in {key!r}); its groups: model, augment")
            where = where[part]
        if leaf in where and isinstance(where[leaf], dict):  # a group, not a setting: say what is in it
            inner = ", ".join(f"{key}.{name}" for name in where[leaf])
            raise PresetError(f"{key!r} is a group of settings, not one; set one of: {inner}")
        if leaf not in where:
            raise PresetError(f"a preset has no setting {key!r}; the settings there: {', '.join(where)}")
        where[leaf] = value
    try:
        return Preset.from_dict(d)
    except PresetError:
        raise
    except (TypeError, ValueError) as e:  # from ModelConfig or AugmentConfig: already one line naming the setting
        raise PresetError(str(e)) from None


def parse_setting(text: str) -> tuple[str, object]:
    """KEY=VALUE as `--set` takes it: the value read as JSON when it is (0.2, true, [0.7, 1.0], null), else as
    text (conv). A PresetError for text without a key and an "="."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise PresetError(f"--set takes KEY=VALUE (e.g. model.stem=conv), not {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def with_text_settings(preset: Preset, settings: list[str]) -> Preset:
    """`preset` with KEY=VALUE texts applied, as `python -m vitlib train --set KEY=VALUE ...` does."""
    return with_settings(preset, dict(parse_setting(s) for s in settings)) if settings else preset


def choose_preset(ds: DogsVsCats, device: torch.device) -> Preset:
    """The automatic choice: `sample` for the synthetic sample, `gpu` on a CUDA GPU, else `cpu`."""
    if ds.synthetic:
        return PRESETS["sample"]
    return PRESETS["gpu" if device.type == "cuda" else "cpu"]


def flat_settings(preset: Preset) -> dict:
    """A preset's settings as `--set` names them (model and augmentation settings dotted), without its name and
    description."""
    d = preset.to_dict()
    flat = {k: v for k, v in d.items() if k not in ("model", "augment", "name", "about")}
    flat.update({f"model.{k}": v for k, v in d["model"].items()})
    flat.update({f"augment.{k}": v for k, v in d["augment"].items()})
    return flat


def compare(*names: str) -> pd.DataFrame:
    """The presets side by side, one row per setting (model and augmentation settings flattened)."""
    return pd.DataFrame({name: {k: str(v) for k, v in flat_settings(get_preset(name)).items()} for name in names})
