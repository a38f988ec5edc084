"""The models: vit-pytorch's efficient ViT with a Linformer (the seed's), the standard ViT, and the
small-data ViT (shifted patches, locality self-attention); a small CNN as the ViTs' honest competitor.

Every ViT cuts the image into patches, makes a token of each (`stem`), prepends a CLS token, adds a
learned position embedding, runs a transformer and classifies from the CLS token (or the mean token).
They differ in the attention: full softmax attention over all n tokens; Linformer's, whose keys and
values are first projected along the sequence from n to k; or locality self-attention (LSA: a token
may not attend to itself, and the softmax temperature is learned). And in the stem: one linear map per
patch ("patch"), the same over the patch and four copies shifted by a pixel ("spt"), or a few strided
convolutions ("conv").
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import torch
from einops.layers.torch import Rearrange
from linformer import Linformer
from torch import nn
from vit_pytorch.efficient import ViT as EfficientViT
from vit_pytorch.vit import ViT as FullViT
from vit_pytorch.vit_for_small_dataset import SPT
from vit_pytorch.vit_for_small_dataset import ViT as SmallDataViT

from .device import memory_bytes
from .patches import PATTERN as PATCH_ORDER  # vit-pytorch's patch order: rows of patches, then pixels

MAX_IMAGE_SIZE = 4096  # px per side: 16 megapixels, far above any photo of the competition (at most 500 px)
TRAINING_BYTES_PER_PARAMETER = 16  # fp32 weights, their gradients and AdamW's two moments


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 224
    patch_size: int = 32
    dim: int = 128
    depth: int = 12
    heads: int = 8
    attention: str = "linformer"  # or "full", or "lsa" (locality self-attention, vit-pytorch's small-data ViT)
    k: int = 64  # Linformer: keys and values are projected along the sequence to this length
    pool: str = "cls"  # or "mean"
    mlp: str = "linear"  # each block's MLP: "linear" (two linear layers), or "local": a 3x3 depthwise convolution
    # between them over the token grid (LocalViT; see LocalFeedForward)
    dropout: float = 0.0
    pos_init_std: float | None = None  # None keeps vit-pytorch's N(0, 1) position embedding
    kv_init: str = "uniform"  # Linformer's E, F: "uniform" (linformer's own) or "identity" (see build_model)
    stem: str = "patch"  # tokens from "patch": one linear map per patch (vit-pytorch's); "spt": shifted patch
    # tokenization (the patch and its four 1-pixel shifts, vit-pytorch's SPT); "conv": see conv_stem
    family: str = "vit"  # or "cnn": the conv stem, then `depth` residual conv blocks (see SmallCNN); no attention
    distill: bool = False  # a DeiT distillation token and head beside the CLS token (see DistilledViT); a preset
    # with a `teacher` trains it
    num_classes: int = 2

    def __post_init__(self):
        """Refuse, in one line, a geometry or option build_model could not honour."""
        for name in ("image_size", "patch_size", "dim", "depth", "heads", "k", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {name} must be a whole number >= 1, not {value!r}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"model image_size must be at most {MAX_IMAGE_SIZE} px, not {self.image_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        for name, allowed in (("attention", ("linformer", "full", "lsa")), ("pool", ("cls", "mean")),
                              ("kv_init", ("uniform", "identity")), ("stem", ("patch", "spt", "conv")),
                              ("family", ("vit", "cnn")), ("mlp", ("linear", "local"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, not {getattr(self, name)!r}")
        if not isinstance(self.distill, bool):
            raise ValueError(f"distill must be true or false, not {self.distill!r}")
        if self.distill and self.family != "vit":
            raise ValueError("a distillation token is a ViT's: distill needs family 'vit', not 'cnn'")
        if self.mlp == "local" and (self.family != "vit" or self.attention == "lsa"):
            raise ValueError("a local MLP is built into the efficient or the standard ViT's blocks: mlp 'local' needs "
                             "family 'vit' and attention 'linformer' or 'full'")
        if self.family == "cnn" and self.stem != "conv":
            raise ValueError(f"the cnn family is built on the conv stem: stem must be 'conv', not {self.stem!r}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"a conv stem halves the image per layer: patch_size must be a power of 2, not "
                             f"{self.patch_size}")
        if not (finite_number(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must lie in [0, 1), not {self.dropout!r}")
        if self.pos_init_std is not None and not (finite_number(self.pos_init_std) and self.pos_init_std > 0):
            raise ValueError(f"pos_init_std must be None or a finite number > 0, not {self.pos_init_std!r}")
        memory, params = memory_bytes(), estimated_parameters(self)
        if memory and params * TRAINING_BYTES_PER_PARAMETER > memory:
            raise ValueError(f"a model of dim {self.dim} and depth {self.depth} has about {params:,.0f} parameters, "
                             f"{params * TRAINING_BYTES_PER_PARAMETER / 2**30:,.0f} GiB to train: more than this "
                             f"machine's {memory / 2**30:.0f} GiB. Choose a smaller {_largest_part(self)}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def cls_tokens(self) -> int:
        """1 where the model has a CLS token; vit-pytorch's standard ViT has none when it pools the tokens' mean."""
        return 0 if self.attention == "full" and self.pool == "mean" else 1

    @property
    def seq_len(self) -> int:
        """Tokens the transformer sees: the patches, the CLS token if any and, with `distill`, the distillation
        token."""
        return self.num_patches + self.cls_tokens + self.distill

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size**2

    def replace(self, **changes) -> ModelConfig:
        return replace(self, **changes)


def _largest_part(cfg: ModelConfig) -> str:
    """The setting(s) behind the largest share of estimated_parameters: what to make smaller."""
    d, n = cfg.dim, cfg.seq_len
    parts = {"model.dim or model.depth": cfg.depth * (9 if cfg.family == "cnn" else 12) * d * d,
             "model.k (or model.depth)": 2 * n * cfg.k * cfg.depth if cfg.attention == "linformer" else 0,
             "model.num_classes": d * cfg.num_classes, "model.image_size (or model.patch_size)": n * d}
    return max(parts, key=parts.get)


def estimated_parameters(cfg: ModelConfig) -> float:
    """About how many parameters build_model(cfg) makes (within a few percent), worked out before anything is built:
    per block 12 dim^2 (Q, K, V and the output projection 4 dim^2, the MLP 8 dim^2; a conv block 9 dim^2),
    Linformer's E and F, the stem, the positions and the head."""
    d, n = cfg.dim, cfg.seq_len
    steps = int(math.log2(cfg.patch_size))
    widths = [3] + [d // 2 ** (steps - 1 - i) for i in range(steps)]
    conv = sum(9 * a * b for a, b in zip(widths[:-1], widths[1:], strict=True))  # the conv stem (see conv_layers)
    if cfg.family == "cnn":
        return cfg.depth * 9 * d * d + conv + d * cfg.num_classes
    stem = conv if cfg.stem == "conv" else cfg.patch_dim * d * (5 if cfg.stem == "spt" else 1)
    linformer = 2 * n * cfg.k if cfg.attention == "linformer" else 0
    local = 40 * d if cfg.mlp == "local" else 0  # a 3x3 depthwise convolution over the MLP's 4 dim channels
    return cfg.depth * (12 * d * d + linformer + local) + stem + n * d + d * cfg.num_classes


def estimated_activation_bytes(cfg: ModelConfig, batch: int) -> float:
    """About how much memory one training step on `batch` images keeps for the backward pass (float32, generous):
    the input and its augmented copies, every stem layer's outputs, and per block the tokens' intermediate values
    (about 17 dim per token: the norms, Q, K, V, the attention output, the MLP's 4 dim twice, the residuals) and the
    attention maps (heads x tokens x keys, before and after the softmax). Worked out before anything is built."""
    d, n, s = cfg.dim, cfg.seq_len, cfg.image_size
    per_image = 4 * 3 * s * s  # the uint8 batch made float, cropped, normalised
    if cfg.stem == "conv":
        steps = int(math.log2(cfg.patch_size))
        widths = [d // 2 ** (steps - 1 - i) for i in range(steps)]
        per_image += sum(3 * w * (s // 2 ** (i + 1)) ** 2 for i, w in enumerate(widths))  # conv, norm, activation
    else:
        per_image += cfg.num_patches * (cfg.patch_dim * (5 if cfg.stem == "spt" else 1) * 2 + d)
    if cfg.family == "cnn":
        per_image += cfg.depth * 5 * d * cfg.grid**2
    else:
        keys = cfg.k if cfg.attention == "linformer" else n
        local = 8 * n * d if cfg.mlp == "local" else 0  # the convolution's input and its activation, 4 dim each
        per_image += cfg.depth * (17 * n * d + local + 2 * cfg.heads * n * keys + (2 * keys * d if keys != n else 0))
    return 4.0 * batch * per_image


def finite_number(value) -> bool:
    """A finite int or float: not a bool (True is an int to Python, not a setting to us), a string, nan or inf.
    The one check of a numeric setting: ModelConfig, AugmentConfig and Preset use it."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


SEED_NOTEBOOK_MODEL = ModelConfig()  # the seed notebook's model: 224 px, patch 32, dim 128, depth 12, heads 8, k 64


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network `cfg` describes, initialised (seed torch first for the same weights every time)."""
    if cfg.family == "cnn":
        model = SmallCNN(cfg.patch_size, cfg.dim, cfg.depth, cfg.num_classes)
        model.config = cfg
        return model
    if cfg.attention == "linformer":
        transformer = Linformer(
            dim=cfg.dim, seq_len=cfg.seq_len, depth=cfg.depth, heads=cfg.heads, k=cfg.k, dropout=cfg.dropout
        )
        model = EfficientViT(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_classes=cfg.num_classes,
            dim=cfg.dim,
            transformer=transformer,
            pool=cfg.pool,
        )
    else:  # "full", or "lsa": vit-pytorch's small-data ViT, the same but for its attention and its SPT stem
        vit = SmallDataViT if cfg.attention == "lsa" else FullViT
        model = vit(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_classes=cfg.num_classes,
            dim=cfg.dim,
            depth=cfg.depth,
            heads=cfg.heads,
            mlp_dim=4 * cfg.dim,
            dim_head=cfg.dim // cfg.heads,
            pool=cfg.pool,
            dropout=cfg.dropout,
        )
    if cfg.stem == "conv":
        model.to_patch_embedding = conv_stem(cfg.patch_size, cfg.dim)
    elif cfg.stem == "spt" and cfg.attention != "lsa":
        model.to_patch_embedding = SPT(dim=cfg.dim, patch_size=cfg.patch_size)
    elif cfg.stem == "patch" and cfg.attention == "lsa":
        model.to_patch_embedding = patch_embedding(cfg.patch_size, cfg.dim)
    if cfg.attention == "linformer" and cfg.kv_init == "identity":  # full attention has no E and F
        init_identity_projections(model)
    if cfg.mlp == "local":
        use_local_mlps(model, cfg)
    if cfg.pos_init_std is not None:  # every ViT family member has these two
        nn.init.trunc_normal_(model.pos_embedding, std=cfg.pos_init_std)
        nn.init.trunc_normal_(model.cls_token, std=cfg.pos_init_std)
    if cfg.distill:
        model = DistilledViT(model)
    model.config = cfg
    return model


def patch_embedding(patch_size: int, dim: int, channels: int = 3) -> nn.Sequential:
    """vit-pytorch's patch projection (as in its standard ViT): each patch flattened, LayerNorm, Linear, LayerNorm."""
    patch_dim = channels * patch_size**2
    return nn.Sequential(Rearrange(PATCH_ORDER, p1=patch_size, p2=patch_size),
                         nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))


def conv_stem(patch_size: int, dim: int, channels: int = 3) -> nn.Sequential:
    """Tokens from log2(patch_size) stride-2 3x3 convolutions instead of one linear map per patch.

    The token grid is the patch projection's (image_size / patch_size per side), but each token is built by
    small overlapping filters, their widths doubling up to `dim` (3 -> dim/4 -> dim/2 -> dim for patch 8), with
    BatchNorm and GELU between: locality and translation equivariance, the two biases a CNN has and a ViT must
    otherwise learn from data (Xiao et al., 2021, "Early convolutions help transformers see better").
    """
    return nn.Sequential(*conv_layers(patch_size, dim, channels), Rearrange("b c h w -> b (h w) c"), nn.LayerNorm(dim))


def conv_layers(patch_size: int, dim: int, channels: int = 3) -> list[nn.Module]:
    """The conv stem's convolutions: (B, channels, S, S) -> (B, dim, S / patch_size, S / patch_size)."""
    steps = int(math.log2(patch_size))
    widths = [dim // 2 ** (steps - 1 - i) for i in range(steps)]
    layers, c = [], channels
    for i, width in enumerate(widths):
        last = i == steps - 1
        layers.append(nn.Conv2d(c, width, 3, stride=2, padding=1, bias=last))
        if not last:
            layers += [nn.BatchNorm2d(width), nn.GELU()]
        c = width
    return layers


class LocalFeedForward(nn.Module):
    """A block's MLP with locality: the two linear layers of the usual MLP, and between them a 3x3 depthwise
    convolution over the patch tokens laid out as their grid, so that each token's hidden features mix with its
    eight neighbours' (Li et al., 2021, "LocalViT: Bringing locality to vision transformers"; vit-pytorch's
    local_vit). The `first` tokens before the patches (the class token, where there is one) and any after them (a
    distillation token) skip the convolution. `norm`: a LayerNorm first (the standard ViT's MLP has its own;
    Linformer's blocks normalise before calling it)."""

    def __init__(self, dim: int, hidden_dim: int, grid: int, dropout: float = 0.0, norm: bool = True, first: int = 1):
        super().__init__()
        self.grid, self.first = grid, first
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.up = nn.Linear(dim, hidden_dim)
        self.local = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        h = self.act(self.up(self.norm(x)))
        a, b = self.first, self.first + self.grid**2
        first, patches, last = h[:, :a], h[:, a:b], h[:, b:]
        grid = patches.transpose(1, 2).reshape(len(h), -1, self.grid, self.grid)
        with torch.autocast(h.device.type, enabled=False):  # CPUs' bf16 depthwise convolution: 2-3x slower than fp32
            patches = self.act(self.local(grid.float())).flatten(2).transpose(1, 2).to(h.dtype)
        return self.dropout(self.down(self.dropout(torch.cat((first, patches, last), dim=1))))


def use_local_mlps(model: nn.Module, cfg: ModelConfig) -> None:
    """Replace every block's MLP of a freshly built efficient (Linformer) or standard ViT by a LocalFeedForward."""
    hidden, first = 4 * cfg.dim, cfg.cls_tokens  # the tokens before the grid: the CLS token, where there is one
    if cfg.attention == "linformer":  # linformer's blocks: [PreNorm(attention), PreNorm(FeedForward)]
        for _, ff in model.transformer.net.layers:
            ff.fn = LocalFeedForward(cfg.dim, hidden, cfg.grid, cfg.dropout, norm=False, first=first)
    else:  # vit-pytorch's Transformer: [Attention, FeedForward], the FeedForward normalising itself
        for block in model.transformer.layers:
            block[1] = LocalFeedForward(cfg.dim, hidden, cfg.grid, cfg.dropout, first=first)


class SmallCNN(nn.Module):
    """The reference CNN: the conv stem, then `depth` residual blocks x + GELU(BN(conv3x3(x))) at `dim` channels
    on the token grid, global average pooling, a linear classifier. It shares the ViTs' conv stem and has about as
    many parameters (it runs about twice as fast on a CPU), so it is the bar a ViT trained the same way should meet."""

    def __init__(self, patch_size: int, dim: int, depth: int, num_classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(*conv_layers(patch_size, dim), nn.BatchNorm2d(dim), nn.GELU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.GELU())
            for _ in range(depth)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.stem(img)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


class DistilledViT(nn.Module):
    """A ViT with DeiT's distillation token (Touvron et al., 2021, "Training data-efficient image transformers").

    A second learned token joins the CLS token and the patch tokens, with a position of its own; it attends and
    is attended to like any token, and after the last block its own head (a copy of the ViT's head, initialised
    afresh) predicts what the teacher says. Training returns both heads' logits (class head, distillation head)
    for distill.deit_loss; evaluation returns their mean, as DeiT predicts.

    vit-pytorch has this idea as `DistillableViT` / `DistillableEfficientViT` (vit_pytorch/distill.py), but its
    token is written for the standard ViT's (1, dim) class token and gets no position: on the efficient ViT, whose
    CLS token is (1, 1, dim), its forward fails. Here the token is written out once for every vitlib ViT (the
    wrapped `vit` keeps its own stem, CLS token, positions, transformer and head), and its transformer must be
    built for seq_len + 1 tokens (Linformer's E and F have a fixed length): build_model does that.
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        dim = vit.pos_embedding.shape[-1]
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_pos = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        nn.init.trunc_normal_(self.dist_pos, std=0.02)
        self.dist_head = copy.deepcopy(vit.mlp_head)  # the class head's shape, weights of its own
        for layer in self.dist_head.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()

    def forward(self, img: torch.Tensor):
        vit = self.vit
        x = vit.to_patch_embedding(img)
        b, _, dim = x.shape
        x = torch.cat((vit.cls_token.reshape(1, -1, dim).expand(b, -1, -1), x), dim=1)
        x = x + vit.pos_embedding.reshape(1, -1, dim)[:, : x.shape[1]]
        x = torch.cat((x, (self.dist_token + self.dist_pos).expand(b, -1, -1)), dim=1)
        x = vit.transformer(vit.dropout(x) if hasattr(vit, "dropout") else x)
        tokens, dist = x[:, :-1], x[:, -1]
        pooled = tokens.mean(dim=1) if vit.pool == "mean" else tokens[:, 0]
        logits, dist_logits = vit.mlp_head(vit.to_latent(pooled)), self.dist_head(dist)
        return (logits, dist_logits) if self.training else (logits + dist_logits) / 2

    # what looks inside a ViT (stems, positions) finds the same parts here
    @property
    def to_patch_embedding(self) -> nn.Module:
        return self.vit.to_patch_embedding

    @property
    def pos_embedding(self) -> nn.Parameter:
        return self.vit.pos_embedding


@torch.no_grad()
def init_identity_projections(model: nn.Module, noise: float = 0.02) -> None:
    """Start Linformer's E and F (n x k) at the identity, plus a little noise.

    linformer draws them uniformly at random, so at the start every projected key is a random blend
    of all the tokens' keys, and attention has to unlearn that. With k >= n, E = F = I makes
    Linformer start out as exactly full attention; with k < n, the first k tokens pass through and
    the rest start from the noise. Training is free to move away from it.
    """
    for module in model.modules():
        if hasattr(module, "proj_k"):
            for proj in (module.proj_k, getattr(module, "proj_v", None)):
                if proj is not None:
                    proj.copy_(torch.eye(*proj.shape) + noise * torch.randn_like(proj))


def pos_embedding(model: nn.Module) -> torch.Tensor:
    """The learned position embedding as (tokens, dim), CLS first, for either model."""
    return model.pos_embedding.detach().reshape(-1, model.pos_embedding.shape[-1])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def config_dict(cfg: ModelConfig) -> dict:
    return asdict(cfg)


def describe(model: nn.Module) -> str:
    """The architecture in one line: its kind, stem, geometry and size."""
    cfg = model.config
    size = f"{count_parameters(model) / 1e6:.2f}M parameters"
    tokens = f"{cfg.seq_len} tokens" if not cfg.distill else f"{cfg.seq_len - 1} tokens + a distillation token"
    if cfg.family == "cnn":
        return (f"small CNN: {cfg.image_size} px, conv stem to {cfg.grid}x{cfg.grid} x {cfg.dim} channels, "
                f"{cfg.depth} residual 3x3 conv blocks, {size}")
    kind = {"linformer": f"efficient ViT + Linformer (k = {cfg.k})", "full": "standard ViT (full attention)",
            "lsa": "small-data ViT (locality self-attention)"}[cfg.attention]
    stem = {"patch": "patch", "spt": "shifted patches (SPT), patch", "conv": "conv stem, patch"}[cfg.stem]
    grid = f"{cfg.grid}x{cfg.grid} tokens" + (" + CLS" if cfg.cls_tokens else "")
    extras = "".join((", the tokens' mean for the answer" if cfg.pool == "mean" else "",
                      ", a 3x3 depthwise conv in each MLP" if cfg.mlp == "local" else ""))
    return (
        f"{kind}: {cfg.image_size} px, {stem} {cfg.patch_size} -> {grid} = "
        f"{tokens}, dim {cfg.dim} = {cfg.heads} heads x {cfg.dim // cfg.heads}, depth {cfg.depth}{extras}, "
        f"{size}"
    )
