"""LPIPS perceptual distance, VGG16 variant (Zhang et al. 2018, https://arxiv.org/abs/1801.03924).

Used as the perceptual reconstruction term of the VQ-GAN tokenizer (Esser et al. 2020,
https://arxiv.org/abs/2012.09841). The network is defined here rather than imported: the VGG16
``features`` conv stack, the lpips input scaling, unit-normalised features, five linear 1×1 heads,
a spatial mean per layer and a sum over layers.

Nothing is downloaded. ``LPIPS()`` builds a randomly initialised network (useful only for tests);
for the real metric get two files yourself and call ``LPIPS.from_files(vgg_path, lin_path)``:

* the torchvision VGG16 ImageNet weights, ``vgg16-397923af.pth``
  (``torchvision.models.VGG16_Weights.IMAGENET1K_V1``,
  https://download.pytorch.org/models/vgg16-397923af.pth). Keys ``features.{i}.weight|bias`` are
  used as they are; the ``classifier.*`` keys of the full state dict are ignored.
* the lpips linear heads, ``weights/v0.1/vgg.pth`` from https://github.com/richzhang/PerceptualSimilarity
  (also shipped inside the ``lpips`` pip package as ``lpips/weights/v0.1/vgg.pth``; taming-transformers
  uses the same file). Keys ``lin{0..4}.model.1.weight``, shapes ``(1, C, 1, 1)``.

Either file may be ``.pth``/``.pt`` (read with ``torch.load(weights_only=True)``, never a full
unpickle) or ``.safetensors``. Loading is strict: a missing, unexpected or wrongly shaped key is a
``ValueError`` that names it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ..hub import check_weights, read_weight_file

# torchvision's VGG16 "D" configuration; "M" is a 2×2 max-pool. Indices into ``features`` follow it.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512)
# Indices (into ``features``) of the ReLUs whose outputs LPIPS compares: relu1_2 … relu5_3.
TAP_INDICES: tuple[int, ...] = (3, 8, 15, 22, 29)
TAP_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
# Four max-pools precede relu5_3, so each side must be at least 2**4 pixels.
MIN_SIZE = 16
# lpips ScalingLayer constants: inputs in [-1, 1] are mapped to ImageNet-normalised space.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` up to relu5_3 (indices 0–29; the last pool is not needed)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = int(v)
    return nn.Sequential(*layers)


class NetLinLayer(nn.Module):
    """A non-negative 1×1 conv C → 1 without bias, named ``model.1`` as in the lpips package.

    Slot ``model.0`` is the lpips package's dropout, only active while lpips trained these heads;
    a frozen metric never uses it, so it is an identity here (the parameter keys are unchanged).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))
        # Uniform non-negative weights until real ones are loaded: every channel counts equally.
        nn.init.constant_(self.model[1].weight, 1.0 / channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, 1, h, w)
        return self.model(x)


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """x / (‖x‖₂ over channels + eps), as lpips' ``normalize_tensor``.

    ``vector_norm``'s backward is 0 at an all-zero position, where ``sqrt(sum(x**2))`` would give NaN.
    """
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (B, 1, h, w)
    return x / (norm + eps)  # (B, C, h, w)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG16 distance. ``forward(x, y)`` takes (B, C, H, W) images in [-1, 1], C ∈ {1, 3},
    H, W ≥ 16, and returns (B,) distances; gradients flow to the inputs, never to the parameters.

    Always in eval mode: ``train()`` is a no-op, so a parent module's ``.train()`` cannot switch it.
    """

    def __init__(self) -> None:
        super().__init__()
        # ScalingLayer (lpips): (x - shift) / scale. Not persistent: the weight files do not hold them.
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = _vgg16_features()
        self.lin0 = NetLinLayer(TAP_CHANNELS[0])
        self.lin1 = NetLinLayer(TAP_CHANNELS[1])
        self.lin2 = NetLinLayer(TAP_CHANNELS[2])
        self.lin3 = NetLinLayer(TAP_CHANNELS[3])
        self.lin4 = NetLinLayer(TAP_CHANNELS[4])
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "LPIPS":
        """A frozen metric: stays in eval mode whatever ``mode`` is."""
        return self

    @property
    def lins(self) -> tuple[NetLinLayer, ...]:
        return (self.lin0, self.lin1, self.lin2, self.lin3, self.lin4)

    @classmethod
    def from_files(cls, vgg_path: str | Path, lin_path: str | Path) -> "LPIPS":
        """Build LPIPS and load torchvision VGG16 weights and lpips ``vgg.pth`` heads, strictly.

        Key mapping: from ``vgg_path`` the ``features.{i}.weight|bias`` keys are kept as they are and
        ``classifier.*`` keys are dropped; from ``lin_path`` the ``lin{k}.model.1.weight`` keys are kept.
        Anything else missing or extra, a wrong shape, or a negative head weight is a ``WeightsError`` (a ValueError).
        """
        model = cls()
        expected = model.state_dict()
        vgg = {k: v for k, v in read_weight_file(vgg_path, "LPIPS").items() if not k.startswith("classifier.")}
        lin = read_weight_file(lin_path, "LPIPS")
        state: dict[str, torch.Tensor] = {}
        for path, given, prefix in ((vgg_path, vgg, "features."), (lin_path, lin, "lin")):
            want = {k: v for k, v in expected.items() if k.startswith(prefix)}
            check_weights(given, want, path, "LPIPS-VGG16")
            state.update(given)
        negative = [k for k in state if k.startswith("lin") and bool((state[k] < 0).any())]
        if negative:
            raise WeightsError(f"{lin_path}: LPIPS head weights must be non-negative; negative in {negative}")
        model.load_state_dict(state, strict=True)
        return model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # x, y: (B, C, H, W) in [-1, 1]
        if x.shape != y.shape:
            raise ValueError(f"LPIPS: inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS: expected (B, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS: images must be at least {MIN_SIZE}×{MIN_SIZE}, got {tuple(x.shape[-2:])}")
        b = x.shape[0]
        h = torch.cat([x, y], dim=0)  # (2B, C, H, W): one pass through VGG for both
        if h.shape[1] == 1:
            h = h.expand(-1, 3, -1, -1)  # (2B, 3, H, W): grey repeated to RGB
        h = (h - self.shift) / self.scale  # (2B, 3, H, W)
        total = h.new_zeros(b)  # (B,)
        taps = iter(zip(TAP_INDICES, self.lins))
        tap, lin = next(taps)
        for i, layer in enumerate(self.features):
            h = layer(h)  # (2B, C_i, H_i, W_i)
            if i != tap:
                continue
            f_x, f_y = _unit_normalize(h).chunk(2, dim=0)  # 2 × (B, C_i, H_i, W_i)
            d = lin((f_x - f_y) ** 2)  # (B, 1, H_i, W_i)
            total = total + d.mean(dim=(1, 2, 3))  # (B,): spatial average, summed over layers
            tap, lin = next(taps, (None, None))
        return total
