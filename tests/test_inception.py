"""FID Inception-v3 (vqgen.eval.inception): pytorch-fid key layout, strict loading, features, FID.

Offline: random weights in pytorch-fid's key format stand in for pt_inception-2015-12-05-6726825d.pth.
Inception at 299 px costs ~6 GFLOP per image, so the model is built once and only a few tiny images run.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vqgen.eval.inception import FC_SHAPE, InceptionFeatures, InceptionWeightsError, inception_features, inception_fid

# A few keys as they appear in pytorch-fid's weight file, with their shapes.
KNOWN_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.weight": (192,),
}


def _random_pytorch_fid_state(model: InceptionFeatures) -> dict[str, torch.Tensor]:
    """A state dict in pytorch-fid's format: model keys, random values, plus the 1008-way fc head."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0, dtype=torch.long)
        elif k.endswith("conv.weight"):  # He-scaled, so that image content survives ~50 layers
            state[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith("bn.weight") or k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) * 0.2 + 0.9
        else:  # bn.bias, running_mean
            state[k] = torch.randn(v.shape, generator=g) * 0.05
    state["fc.weight"] = torch.randn(FC_SHAPE, generator=g)
    state["fc.bias"] = torch.randn(FC_SHAPE[0], generator=g)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(model loaded from .pth, state dict written, .pth path, .safetensors path)."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("inception")
    state = _random_pytorch_fid_state(InceptionFeatures())
    pth, st = d / "pt_inception.pth", d / "pt_inception.safetensors"
    torch.save(state, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    return InceptionFeatures.from_file(pth), state, pth, st


def test_layout_matches_pytorch_fid_keys():
    sd = InceptionFeatures().state_dict()
    for k, shape in KNOWN_KEYS.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith(("fc.", "AuxLogits.")) for k in sd)
    n_params = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    # Independent check against torchvision's Inception-v3 parameter count (same layout as the FID graph).
    assert n_params == 21_785_568  # torchvision meta 27_161_264 - AuxLogits - 1000-way fc


def test_from_file_loads_exactly(weights):
    model, state, _, st = weights
    for m in (model, InceptionFeatures.from_file(st)):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
        m.train()
        assert not m.training
        for k, v in m.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(v, state[k]), k


def test_from_file_errors_name_the_key(weights, tmp_path):
    _, state, _, _ = weights
    missing = {k: v for k, v in state.items() if k != "Mixed_6c.branch7x7_2.bn.running_var"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(InceptionWeightsError, match="Mixed_6c.branch7x7_2.bn.running_var"):
        InceptionFeatures.from_file(tmp_path / "missing.pth")

    extra = dict(state, **{"AuxLogits.conv0.conv.weight": torch.zeros(128, 768, 1, 1)})
    save_file({k: v.contiguous() for k, v in extra.items()}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(InceptionWeightsError, match="AuxLogits.conv0.conv.weight"):
        InceptionFeatures.from_file(tmp_path / "extra.safetensors")

    bad = dict(state, **{"Mixed_5b.branch5x5_2.conv.weight": torch.zeros(64, 48, 3, 3)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"Mixed_5b.branch5x5_2.conv.weight.*\(64, 48, 3, 3\).*\(64, 48, 5, 5\)"):
        InceptionFeatures.from_file(tmp_path / "bad.pth")

    imagenet = dict(state, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(imagenet, tmp_path / "imagenet.pth")
    with pytest.raises(InceptionWeightsError, match="fc.weight"):
        InceptionFeatures.from_file(tmp_path / "imagenet.pth")

    with pytest.raises(FileNotFoundError):
        InceptionFeatures.from_file(tmp_path / "nope.pth")


def test_from_file_refuses_pickled_objects(tmp_path):
    import collections
    torch.save({"a": collections.Counter()}, tmp_path / "obj.pth")
    with pytest.raises(InceptionWeightsError):
        InceptionFeatures.from_file(tmp_path / "obj.pth")


def test_features_and_fid(weights):
    model, _, _, _ = weights
    g = torch.Generator().manual_seed(1)
    grey = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=g)
    feats = inception_features(model, grey, batch_size=2)  # two batches: 2 + 1
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and (feats >= 0).all() and feats.std(dim=0).sum() > 0
    # Grey input is the same as the image repeated to RGB.
    with torch.inference_mode():
        rgb = model(grey[:1].expand(-1, 3, -1, -1))
    torch.testing.assert_close(rgb, feats[:1], rtol=1e-4, atol=1e-6)
    assert inception_fid(grey, grey, model) == pytest.approx(0.0, abs=1e-6 * max(1.0, float(feats.pow(2).sum())))
    with pytest.raises(ValueError):
        inception_features(model, grey.float())
