"""Standard FID: the FID Inception-v3 network, with weights the user supplies by path.

FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500) is the Fréchet distance between
Gaussians fitted to the 2048-d pool3 features of the Inception-v3 graph that the original TF
implementation used (``inception-2015-12-05``). pytorch-fid and torch-fidelity port that graph to
PyTorch; this module defines the same network in-project, as a plain ``nn.Module`` whose
constructor loads nothing:

* ``BasicConv2d``: conv without bias, BatchNorm (eps 1e-3), ReLU;
* the torchvision Inception-v3 stem and blocks ``Mixed_5b`` … ``Mixed_7c``, with the FID graph's
  differences: the pool branches of ``Mixed_5b-d`` (A), ``Mixed_6b-e`` (C) and ``Mixed_7b`` (E_1)
  average over real pixels only (``count_include_pad=False``, as TF does), and ``Mixed_7c`` (E_2)
  max-pools in its pool branch;
* input handling as pytorch-fid: images in [0, 1] are resized bilinearly to 299×299
  (``align_corners=False``, no antialiasing) and scaled to [-1, 1]; grey images are repeated to RGB;
* output: the global average pool after ``Mixed_7c``, (N, 2048). The 1008-way ``fc`` head is not
  built.

Nothing is downloaded. ``InceptionFeatures()`` is randomly initialised (for tests only); for real
FID get pytorch-fid's weight file yourself,
``pt_inception-2015-12-05-6726825d.pth``
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth),
and call ``InceptionFeatures.from_file(path)``. The file may be that ``.pth``/``.pt`` (read with
``torch.load(weights_only=True)``, never a full unpickle) or a ``.safetensors`` conversion of it.
Keys are the pytorch-fid ones (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``,
…); ``fc.*`` is dropped (if present, ``fc.weight`` must be the FID graph's (1008, 2048), which tells
it apart from torchvision's 1000-class ImageNet Inception) and BatchNorm ``num_batches_tracked``
counters are optional. Anything else missing, extra or wrongly shaped is an ``InceptionWeightsError``
(a ``ValueError``) naming the keys.

With correct weights the numbers are meant to match pytorch-fid's for the same uint8 images; that
match has not been checked against reference outputs here (no weights could be downloaded).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from ..hub import check_weights, read_weight_file
from .fd import frechet_distance

FEATURE_DIM = 2048
INPUT_SIZE = 299
# The TF graph's classifier has 1008 outputs (torchvision's ImageNet Inception: 1000).
FC_SHAPE = (1008, FEATURE_DIM)


# An Inception weight file that cannot be used (unreadable, missing/extra/mis-shaped keys).
InceptionWeightsError = WeightsError


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_real(x: torch.Tensor) -> torch.Tensor:
    """3×3, stride 1, 'same' average pool over real pixels only (TF's padding semantics)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35×35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1. Out: 224 + pool_features channels."""

    def __init__(self, in_ch: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_real(x))
        return torch.cat([b1, b5, b3, bp], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2. Out: 384 + 96 + in_ch."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], dim=1)


class FIDInceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions; avg-pool over real pixels. Out: 768 channels."""

    def __init__(self, in_ch: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(_avg_pool_real(x))
        return torch.cat([b1, b7, bd, bp], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2. Out: 320 + 192 + in_ch."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)


class FIDInceptionE(nn.Module):
    """8×8 block with split 1×3/3×1 convolutions. Out: 320 + 768 + 768 + 192 = 2048 channels.

    ``pool="avg"``: average over real pixels (FIDInceptionE_1, ``Mixed_7b``); ``pool="max"``: the FID
    graph's max pool (FIDInceptionE_2, ``Mixed_7c``).
    """

    def __init__(self, in_ch: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], dim=1)
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_real(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], dim=1)


class InceptionFeatures(nn.Module):
    """FID Inception-v3 up to pool3. ``forward(images)`` takes (N, C, H, W) images, C ∈ {1, 3}: uint8
    in [0, 255] or float in [0, 1]; returns float32 (N, 2048) features.

    Frozen: no parameter requires grad, and ``train()`` is a no-op, so it stays in eval mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        """A frozen feature extractor: stays in eval mode whatever ``mode`` is."""
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> "InceptionFeatures":
        """Build the network and load pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or a
        ``.safetensors`` with the same keys), strictly.

        ``fc.*`` keys are dropped (``fc.weight``, if present, must be (1008, 2048)); ``*.num_batches_tracked``
        keys are optional and ignored. Any other missing or unexpected key, a wrong shape or a
        non-float tensor is an ``InceptionWeightsError`` naming it.
        """
        model = cls()
        expected = {k: v for k, v in model.state_dict().items() if not k.endswith(".num_batches_tracked")}
        given = read_weight_file(path, "Inception")
        fc_weight = given.get("fc.weight")
        if fc_weight is not None and tuple(fc_weight.shape) != FC_SHAPE:
            raise InceptionWeightsError(
                f"{path}: 'fc.weight' has shape {tuple(fc_weight.shape)}, expected {FC_SHAPE}: this is not the "
                "FID Inception graph (torchvision's ImageNet Inception-v3 has 1000 classes); use pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth")
        given = {k: v for k, v in given.items()
                 if not k.startswith("fc.") and not k.endswith(".num_batches_tracked")}
        check_weights(given, expected, path, "the FID Inception-v3")
        state = {k: given[k].float() for k in expected}
        # BatchNorm step counters are unused in eval mode; keep the model's own.
        state.update({k: v for k, v in model.state_dict().items() if k.endswith(".num_batches_tracked")})
        model.load_state_dict(state, strict=True)
        return model

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 or [0, 1] float -> (N, 3, 299, 299) float32 in [-1, 1] on the model's device."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception expects (N, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
        device = self.Conv2d_1a_3x3.conv.weight.device
        x = images.to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()  # (N, C, H, W) in [0, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (N, 3, H, W): grey repeated to RGB
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0  # (N, 3, 299, 299)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._prepare(images)  # (N, 3, 299, 299)
        x = self.Conv2d_1a_3x3(x)  # (N, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (N, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (N, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d):
            x = block(x)  # (N, 256 / 288 / 288, 35, 35)
        x = self.Mixed_6a(x)  # (N, 768, 17, 17)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)  # (N, 768, 17, 17)
        x = self.Mixed_7a(x)  # (N, 1280, 8, 8)
        x = self.Mixed_7b(x)  # (N, 2048, 8, 8)
        x = self.Mixed_7c(x)  # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3)).float()  # (N, 2048): global average pool (pool3)


def inception_features(model: InceptionFeatures, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """Float32 (N, 2048) pool3 features of uint8 (N, C, H, W) images, on the CPU."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"inception_features expects uint8 (N, C, H, W) images, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with torch.inference_mode():
        feats = [model(images[i:i + batch_size]).cpu() for i in range(0, images.shape[0], batch_size)]
    if not feats:
        raise ValueError("no images given")
    return torch.cat(feats)


def inception_fid(images_a: torch.Tensor, images_b: torch.Tensor, model: InceptionFeatures,
                  batch_size: int = 50) -> float:
    """Standard FID between two uint8 (N, C, H, W) image sets (C ∈ {1, 3}, each N >= 2)."""
    return frechet_distance(inception_features(model, images_a, batch_size),
                            inception_features(model, images_b, batch_size))
