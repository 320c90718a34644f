"""PatchGAN discriminator for the VQ-GAN tokenizer (Esser et al. 2020, https://arxiv.org/abs/2012.09841).

The pix2pix ``NLayerDiscriminator`` (Isola et al. 2017, https://arxiv.org/abs/1611.07004) as
taming-transformers uses it: every output logit judges one overlapping patch of the input.
"""
from __future__ import annotations

import torch
from torch import nn

KERNEL = 4
PADDING = 1


def _conv_out(size: int, stride: int) -> int:
    """Output length of a 4×4 conv with padding 1; 0 when the input is too small for the kernel."""
    if size + 2 * PADDING < KERNEL:
        return 0
    return (size + 2 * PADDING - KERNEL) // stride + 1


def weights_init(module: nn.Module) -> None:
    """taming's init (after DCGAN, https://arxiv.org/abs/1511.06434): conv weights N(0, 0.02),
    BatchNorm weight N(1, 0.02) and bias 0; conv biases keep PyTorch's default."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class PatchDiscriminator(nn.Module):
    """conv4×4/2 + LeakyReLU(0.2); ``n_layers`` × [conv4×4 (stride 2, the last stride 1, no bias) +
    BatchNorm + LeakyReLU(0.2)] with channels ndf·min(2**n, 8); conv4×4/1 to one logit channel.

    forward: (B, in_channels, H, W) -> (B, 1, h, w) logits. With n_layers=3, 256² -> 30², 64² -> 6²,
    32² -> 2²; with n_layers=2, 32² -> 6².
    """

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("ndf", ndf), ("n_layers", n_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PatchDiscriminator: {name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.n_layers = n_layers
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, KERNEL, stride=2, padding=PADDING),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                # No bias: BatchNorm's shift replaces it.
                nn.Conv2d(ndf * prev, ndf * mult, KERNEL, stride=stride, padding=PADDING, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, KERNEL, stride=1, padding=PADDING))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the logit map for an H×W input; a side is 0 if the input is too small."""
        # The first conv and all but the last block halve; the last block and the head do not.
        strides = [2] * self.n_layers + [1, 1]
        sizes = []
        for s in (height, width):
            for stride in strides:
                s = _conv_out(s, stride)
            sizes.append(s)
        return sizes[0], sizes[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, h, w)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PatchDiscriminator: expected (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = self.output_size(x.shape[-2], x.shape[-1])
        if h < 1 or w < 1:
            raise ValueError(f"PatchDiscriminator: a {x.shape[-2]}×{x.shape[-1]} input is too small for "
                             f"n_layers={self.n_layers} (the logit map would be {h}×{w})")
        return self.main(x)

