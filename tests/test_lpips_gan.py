"""LPIPS, PatchGAN discriminator and VQ-GAN loss terms. Offline: every weight here is random."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vqgen.tokenizer.discriminator import PatchDiscriminator
from vqgen.tokenizer.losses import adaptive_weight, generator_adv_loss, hinge_d_loss, reconstruction_loss
from vqgen.tokenizer.lpips import LPIPS

# Written out independently of the module under test: torchvision vgg16 "D" config.
CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
LIN_CHANNELS = [64, 128, 256, 512, 512]


def torchvision_style_vgg16_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict keyed like ``torchvision.models.vgg16().state_dict()`` (small classifier)."""
    g = torch.Generator().manual_seed(seed)
    state, idx, c_in = {}, 0, 3
    for v in CFG:
        if v == "M":
            idx += 1
            continue
        fan_in = c_in * 9
        state[f"features.{idx}.weight"] = torch.randn(v, c_in, 3, 3, generator=g) * (2.0 / fan_in) ** 0.5
        state[f"features.{idx}.bias"] = torch.randn(v, generator=g) * 0.01
        idx += 2  # conv + relu
        c_in = v
    # The real classifier is 4096-wide; the loader must drop these keys whatever their shapes.
    state["classifier.0.weight"] = torch.randn(8, 16, generator=g)
    state["classifier.0.bias"] = torch.randn(8, generator=g)
    state["classifier.6.weight"] = torch.randn(4, 8, generator=g)
    return state


def lpips_lin_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 0.1 for k, c in enumerate(LIN_CHANNELS)}


def reference_lpips(vgg: dict, lin: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS written functionally from the paper / lpips package, for comparison."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(img):
        h, out, idx = (img - shift) / scale, [], 0
        for v in CFG[:-1]:
            if v == "M":
                h = F.max_pool2d(h, 2)
                idx += 1
                continue
            h = F.relu(F.conv2d(h, vgg[f"features.{idx}.weight"], vgg[f"features.{idx}.bias"], padding=1))
            out.append(h) if idx + 1 in (3, 8, 15, 22, 29) else None
            idx += 2
        return out

    total = 0
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((a - b) ** 2, lin[f"lin{k}.model.1.weight"]).mean(dim=(1, 2, 3))
    return total


@pytest.fixture(scope="module")
def lpips_random() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS()


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """The same random weights saved as .safetensors and as plain-state-dict .pth files."""
    d = tmp_path_factory.mktemp("lpips_weights")
    vgg, lin = torchvision_style_vgg16_state(), lpips_lin_state()
    save_file(vgg, str(d / "vgg16.safetensors"))
    save_file(lin, str(d / "vgg_lin.safetensors"))
    torch.save(vgg, d / "vgg16.pth")
    torch.save(lin, d / "vgg.pth")
    return d, vgg, lin


def images(seed: int, b: int = 2, c: int = 3, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, size, size, generator=g) * 2 - 1


# ---------------------------------------------------------------- LPIPS forward


def test_lpips_identical_is_zero_and_different_is_positive(lpips_random):
    x, y = images(0), images(1)
    assert lpips_random(x, x).shape == (2,)
    assert torch.equal(lpips_random(x, x), torch.zeros(2))
    d_xy, d_yx = lpips_random(x, y), lpips_random(y, x)
    assert (d_xy > 0).all()
    torch.testing.assert_close(d_xy, d_yx)
    # A small perturbation is closer than an unrelated image.
    assert (lpips_random(x, x + 0.01 * images(2)) < d_xy).all()


def test_lpips_grey_input_is_repeated_to_rgb(lpips_random):
    x, y = images(3, c=1), images(4, c=1)
    torch.testing.assert_close(lpips_random(x, y), lpips_random(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))


def test_lpips_gradients_reach_input_not_params(lpips_random):
    x = images(5).requires_grad_(True)
    y = images(6)
    lpips_random(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in lpips_random.parameters())


def test_lpips_is_frozen_and_stays_in_eval(lpips_random):
    assert not lpips_random.training
    parent = nn.ModuleDict({"lpips": lpips_random}).train()
    assert parent.training and not lpips_random.training
    assert not any(p.requires_grad for p in lpips_random.parameters())
    # The real weight files' keys, and nothing else (scaling constants are non-persistent buffers).
    vgg_keys = {k for k in torchvision_style_vgg16_state() if not k.startswith("classifier.")}
    assert set(lpips_random.state_dict()) == vgg_keys | set(lpips_lin_state())


@pytest.mark.parametrize("bad", [
    (images(0), images(1, b=3)),  # batch mismatch
    (images(0, c=2), images(1, c=2)),  # 2 channels
    (images(0, size=8), images(1, size=8)),  # too small for 4 max-pools
    (images(0)[0], images(1)[0]),  # no batch dim
])
def test_lpips_rejects_bad_inputs(lpips_random, bad):
    with pytest.raises(ValueError):
        lpips_random(*bad)


# ---------------------------------------------------------------- LPIPS loading


@pytest.mark.parametrize("fmt", [("vgg16.safetensors", "vgg_lin.safetensors"), ("vgg16.pth", "vgg.pth")])
def test_lpips_from_files_loads_weights_exactly(weight_files, fmt):
    d, vgg, lin = weight_files
    model = LPIPS.from_files(d / fmt[0], d / fmt[1])
    state = model.state_dict()
    for k, v in {**vgg, **lin}.items():
        if k.startswith("classifier."):
            assert k not in state
        else:
            assert torch.equal(state[k], v), k
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x, y = images(7), images(8)
    torch.testing.assert_close(model(x, y), reference_lpips(vgg, lin, x, y), rtol=1e-4, atol=1e-6)


def test_lpips_from_files_rejects_missing_unexpected_and_misshaped(weight_files, tmp_path):
    d, vgg, lin = weight_files
    lin_file = d / "vgg.pth"

    missing = {k: v for k, v in vgg.items() if k != "features.28.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="features.28.bias"):
        LPIPS.from_files(tmp_path / "missing.safetensors", lin_file)

    extra = {**lin, "lin5.model.1.weight": torch.ones(1, 3, 1, 1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="lin5.model.1.weight"):
        LPIPS.from_files(d / "vgg16.safetensors", tmp_path / "extra.pth")

    wrong = {**lin, "lin2.model.1.weight": torch.ones(1, 128, 1, 1)}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="lin2.model.1.weight"):
        LPIPS.from_files(d / "vgg16.safetensors", tmp_path / "wrong.pth")

    negative = {**lin, "lin0.model.1.weight": -torch.ones(1, 64, 1, 1)}
    torch.save(negative, tmp_path / "negative.pth")
    with pytest.raises(ValueError, match="non-negative"):
        LPIPS.from_files(d / "vgg16.safetensors", tmp_path / "negative.pth")


def test_lpips_from_files_never_unpickles_and_checks_format(weight_files, tmp_path):
    d, vgg, lin = weight_files

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"lin0.model.1.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        LPIPS.from_files(d / "vgg16.safetensors", tmp_path / "evil.pth")
    (tmp_path / "lin.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown weights format"):
        LPIPS.from_files(d / "vgg16.safetensors", tmp_path / "lin.npz")
    with pytest.raises(FileNotFoundError):
        LPIPS.from_files(tmp_path / "nope.pth", d / "vgg.pth")


# ---------------------------------------------------------------- discriminator


@pytest.mark.parametrize("size, n_layers, out", [(32, 2, 6), (32, 3, 2), (64, 2, 14), (64, 3, 6), (64, 1, 30)])
def test_discriminator_output_shapes(size, n_layers, out):
    d = PatchDiscriminator(in_channels=3, ndf=8, n_layers=n_layers)
    x = torch.randn(2, 3, size, size)
    logits = d(x)
    assert logits.shape == (2, 1, out, out)
    assert d.output_size(size, size) == (out, out)


def test_discriminator_structure_and_init():
    torch.manual_seed(0)
    d = PatchDiscriminator(in_channels=1, ndf=64, n_layers=5)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    # ndf·min(2**n, 8): the multiplier is capped at 8.
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 512, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 2, 2, 1, 1]
    assert [c.bias is None for c in convs] == [False] + [True] * 5 + [False]
    assert len(bns) == 5
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bw = torch.cat([b.weight for b in bns])
    assert abs(bw.mean().item() - 1.0) < 5e-3 and abs(bw.std().item() - 0.02) < 5e-3
    assert all(torch.equal(b.bias, torch.zeros_like(b.bias)) for b in bns)
    assert isinstance(d.main[1], nn.LeakyReLU) and d.main[1].negative_slope == 0.2
    assert d(torch.randn(2, 1, 128, 128)).shape == (2, 1, 2, 2)


def test_discriminator_rejects_bad_config_and_input():
    with pytest.raises(ValueError, match="too small"):
        PatchDiscriminator(3, ndf=8, n_layers=4)(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="expected"):
        PatchDiscriminator(3, ndf=8)(torch.randn(2, 1, 32, 32))
    for bad in ({"in_channels": 0}, {"in_channels": 3, "ndf": 0}, {"in_channels": 3, "n_layers": 0}):
        with pytest.raises(ValueError):
            PatchDiscriminator(**bad)


# ---------------------------------------------------------------- losses


def test_hinge_d_loss_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r): 0, 0.5, 2   -> mean 2.5/3
    fake = torch.tensor([[-2.0, 0.0], [1.0, -0.5]])  # relu(1 + f): 0, 1, 2, 0.5 -> mean 0.875
    expected = 0.5 * (2.5 / 3 + 0.875)
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected)
    # Perfectly separated logits give zero loss.
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_generator_adv_loss():
    assert generator_adv_loss(torch.tensor([1.0, -3.0, 5.0, 1.0])).item() == pytest.approx(-1.0)


def test_adaptive_weight_matches_hand_computed_ratio_and_clamps():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)
    x = torch.randn(5, 3)
    out = layer(x)  # (5, 2)
    nll = out.pow(2).mean()
    g = -out[:, 0].mean()
    # d nll / dW = 2/10 · outᵀ x ; d g / dW: row 0 = -mean(x), row 1 = 0.
    grad_nll = (2.0 / out.numel()) * out.detach().T @ x
    grad_g = torch.stack([-x.mean(0), torch.zeros(3)])
    expected = grad_nll.norm() / (grad_g.norm() + 1e-4)
    w = adaptive_weight(nll, g, layer.weight)
    torch.testing.assert_close(w, expected)
    assert not w.requires_grad
    # Graphs are retained: the caller can still backward through both losses.
    (nll + w * g).backward()
    assert layer.weight.grad is not None

    out = layer(x)
    # Unclamped this ratio is about 1e6·‖∇nll‖/‖∇g‖ > 1e4: clamped to max_weight.
    assert adaptive_weight(1e6 * out.pow(2).mean(), out.sum(), layer.weight).item() == 1e4
    assert adaptive_weight(1e6 * out.pow(2).mean(), out.sum(), layer.weight, max_weight=10.0).item() == 10.0
    # delta enters the denominator: d sum(out) / dW has both rows equal to x.sum(0).
    w_delta = adaptive_weight(out.pow(2).mean(), out.sum(), layer.weight, delta=1.0)
    grad_sum = x.sum(0).expand(2, 3)
    torch.testing.assert_close(w_delta, grad_nll.norm() / (grad_sum.norm() + 1.0))


def test_adaptive_weight_rejects_bad_input():
    layer = nn.Linear(3, 2)
    out = layer(torch.randn(4, 3))
    with pytest.raises(ValueError, match="scalars"):
        adaptive_weight(out, out.mean(), layer.weight)
    with pytest.raises(ValueError, match="does not depend"):
        adaptive_weight(out.mean(), (out.detach() * 0 + layer.bias.sum()).mean(), layer.weight)
    with pytest.raises(ValueError, match="no graph"):
        adaptive_weight(out.mean().detach(), out.mean(), layer.weight)
    with pytest.raises(ValueError, match="> 0"):
        adaptive_weight(out.mean(), out.sum(), layer.weight, delta=0.0)


def test_reconstruction_loss_kinds():
    x = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    x_hat = torch.tensor([[0.0, 1.0], [0.0, 2.5]])  # diffs 1, -2, 0, -0.5
    assert reconstruction_loss(x, x_hat, "l1").item() == pytest.approx(3.5 / 4)
    assert reconstruction_loss(x, x_hat, "l2").item() == pytest.approx(5.25 / 4)
    with pytest.raises(ValueError, match="unknown kind"):
        reconstruction_loss(x, x_hat, "l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_loss(x, x_hat[:1], "l1")
