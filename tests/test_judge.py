"""The judge classifier, its training loop and the Fréchet distance (offline, seconds on a CPU)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from vqgen.config import apply_overrides, from_dict
from vqgen.data import ImageDataset
from vqgen.errors import ConfigError, DataError
from vqgen.eval.classifier import evaluate_classifier, judge_predictions
from vqgen.eval.fd import feature_stats, frechet_distance, frechet_distance_from_stats, judge_fd
from vqgen.eval.judge import JudgeClassifier, JudgeConfig, to_model_range
from vqgen.train.classifier import CLASSIFIER_PRESETS, ClassifierTrainConfig, augment_batch, train_classifier


SMALL = JudgeConfig(widths=(8, 16), blocks=(1, 1), feature_dim=16, norm_groups=4, resolution=16, num_classes=3)


def synthetic_dataset(n_per_class: int, seed: int, res: int = 16) -> ImageDataset:
    """Three separable grey patterns (horizontal stripes, vertical stripes, checkerboard) plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")  # (res, res) each
    patterns = [(yy // 2) % 2, (xx // 2) % 2, (yy // 4 + xx // 4) % 2]
    images, labels = [], []
    for k, pattern in enumerate(patterns):
        base = pattern.float() * 180 + 40  # (res, res)
        noisy = base + 30 * torch.randn(n_per_class, 1, res, res, generator=g)  # (n, 1, res, res)
        images.append(noisy.clamp(0, 255).to(torch.uint8))
        labels.append(torch.full((n_per_class,), k, dtype=torch.long))
    order = torch.randperm(3 * n_per_class, generator=g)
    return ImageDataset(torch.cat(images)[order], torch.cat(labels)[order],
                        ["horizontal", "vertical", "checker"], source=f"synthetic-{seed}")


def tiny_config(**overrides) -> ClassifierTrainConfig:
    cfg = apply_overrides(CLASSIFIER_PRESETS["tiny"](), ["model.resolution=16", "model.num_classes=3"])
    return apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])


# --- model ------------------------------------------------------------------------------------------

def test_shapes_and_range():
    torch.manual_seed(0)
    judge = JudgeClassifier(JudgeConfig())
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    assert judge(x).shape == (3, 10)
    assert judge.features(x).shape == (3, 128)
    assert judge.num_features == 128
    full_res = JudgeClassifier(JudgeConfig(patch=1, widths=(8, 16), blocks=(1, 2), norm_groups=4, resolution=16))
    assert full_res(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    u8 = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    assert to_model_range(u8).flatten().tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        to_model_range(x * 10 + 5)
    with pytest.raises(ValueError, match="expects"):
        judge(torch.zeros(1, 3, 32, 32))


def test_config_validation():
    assert JudgeConfig(widths=[8, 16], blocks=[1, 2], norm_groups=4).widths == (8, 16)
    with pytest.raises(ConfigError, match="divisible"):
        JudgeConfig(resolution=30)
    with pytest.raises(ConfigError, match="divisible"):
        JudgeConfig(resolution=4, widths=(8, 16), blocks=(1, 1), patch=4)
    with pytest.raises(ConfigError, match="blocks"):
        JudgeConfig(widths=(8, 16), blocks=(1,))
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(JudgeConfig, {"width": [8]})
    with pytest.raises(ConfigError):
        from_dict(ClassifierTrainConfig, {"epochs": 0})
    for name, preset in CLASSIFIER_PRESETS.items():
        assert isinstance(preset(), ClassifierTrainConfig), name


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    judge = JudgeClassifier(SMALL).eval()
    judge.save_pretrained(tmp_path / "j")
    loaded = JudgeClassifier.from_pretrained(tmp_path / "j")
    assert loaded.config == SMALL and not loaded.training
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(judge(x), loaded(x))

    # A config that no longer matches the weights fails loudly, naming the keys.
    path = tmp_path / "j" / "config.json"
    payload = json.loads(path.read_text())
    payload["config"]["blocks"] = [1, 2]
    path.write_text(json.dumps(payload))
    with pytest.raises(RuntimeError, match="does not match"):
        JudgeClassifier.from_pretrained(tmp_path / "j")
    payload["kind"] = "tokenizer"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="not a 'judge'"):
        JudgeClassifier.from_pretrained(tmp_path / "j")


# --- Fréchet distance -------------------------------------------------------------------------------

def _with_exact_stats(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """(n, D) float64 samples whose sample mean and (n-1)-covariance are exactly ``mean`` and ``cov``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, mean.numel(), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    white = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / (n - 1))).T  # sample cov = identity
    return white @ torch.linalg.cholesky(cov).T + mean


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(a)
    return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T


def test_fd_self_is_zero_and_mean_shift_adds_its_square():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    previous = 0.0
    for scale in (0.5, 1.0, 2.0):
        shift = scale * torch.arange(1.0, 9.0)  # (8,)
        fd = frechet_distance(x, x + shift)
        assert fd == pytest.approx(shift.square().sum().item(), rel=1e-6)  # equal covariances
        assert fd > previous
        previous = fd
    with pytest.raises(ValueError):
        frechet_distance(x[:1], x)
    with pytest.raises(ValueError):
        frechet_distance(x, x[:, :4])


def test_fd_matches_closed_form():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    a = _with_exact_stats(200, torch.tensor([1.0], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64), 1)
    b = _with_exact_stats(300, torch.tensor([-2.0], dtype=torch.float64), torch.tensor([[9.0]], dtype=torch.float64), 2)
    assert frechet_distance(a, b) == pytest.approx((1 + 2) ** 2 + (2 - 3) ** 2, rel=1e-9)

    # Diagonal: |m1 - m2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
    m1, m2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, -1.0])
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    a = _with_exact_stats(400, m1.double(), torch.diag(v1).double(), 3)
    b = _with_exact_stats(400, m2.double(), torch.diag(v2).double(), 4)
    expected = (m1 - m2).square().sum() + (v1.sqrt() - v2.sqrt()).square().sum()
    assert frechet_distance(a.float(), b.float()) == pytest.approx(expected.item(), rel=1e-5)

    # Full covariances: Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), via symmetric square roots.
    g = torch.Generator().manual_seed(5)
    r1, r2 = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    s1, s2 = r1 @ r1.T + 0.1 * torch.eye(6, dtype=torch.float64), r2 @ r2.T + 0.1 * torch.eye(6, dtype=torch.float64)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    root1 = _sqrtm_psd(s1)
    expected = (mu1 - mu2).square().sum() + torch.trace(s1 + s2 - 2 * _sqrtm_psd(root1 @ s2 @ root1))
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected.item(), rel=1e-8)
    a, b = _with_exact_stats(100, mu1, s1, 6), _with_exact_stats(50, mu2, s2, 7)
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-8)
    mu, sigma = feature_stats(a)
    assert torch.allclose(mu, mu1) and torch.allclose(sigma, s1)


def test_judge_fd_on_images():
    torch.manual_seed(0)
    judge = JudgeClassifier(SMALL)
    data = synthetic_dataset(20, seed=0)
    assert judge_fd(judge, data.images, data.images, batch_size=7) == pytest.approx(0.0, abs=1e-6)
    other = synthetic_dataset(20, seed=1).images
    brighter = (data.images.int() + 60).clamp(max=255).to(torch.uint8)
    assert judge_fd(judge, data.images, brighter) > judge_fd(judge, data.images, other)
    assert judge.training  # the mode is restored


# --- training ---------------------------------------------------------------------------------------

def test_augment_batch_is_seeded_and_keeps_shape():
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    a = augment_batch(x, torch.Generator().manual_seed(3), 2)
    b = augment_batch(x, torch.Generator().manual_seed(3), 2)
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    flipped = augment_batch(x, torch.Generator().manual_seed(3), 0)
    for i in range(16):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    shifted = augment_batch(torch.full((64, 1, 4, 4), 255, dtype=torch.uint8), torch.Generator().manual_seed(0), 2)
    assert (shifted == 0).any() and (shifted == 255).any()  # some crops take in the zero border


def test_tiny_preset_trains_on_synthetic_data(tmp_path):
    train, test = synthetic_dataset(60, seed=0), synthetic_dataset(30, seed=1)
    cfg = tiny_config()
    metrics = train_classifier(cfg, None, tmp_path / "judge", progress=False, train_data=train, test_data=test)
    assert metrics["accuracy"] >= 0.95, metrics
    assert metrics["n_images"] == 90 and len(metrics["history"]) == cfg.epochs
    saved = json.loads((tmp_path / "judge" / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"]
    assert (tmp_path / "judge" / "model.safetensors").is_file()

    report = evaluate_classifier(tmp_path / "judge", test)
    assert report["accuracy"] == metrics["accuracy"] and report["n_images"] == 90
    judge = JudgeClassifier.from_pretrained(tmp_path / "judge")
    labels, feats = judge_predictions(judge, test.images, batch_size=16)
    assert labels.dtype == torch.long and labels.shape == (90,) and feats.shape == (90, 16)
    assert math.isclose((labels == test.labels).float().mean().item(), metrics["accuracy"])

    # Same seed, same weights.
    train_classifier(cfg, None, tmp_path / "again", progress=False, train_data=train, test_data=test)
    again = JudgeClassifier.from_pretrained(tmp_path / "again")
    for (k, v), w in zip(judge.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k


def test_train_rejects_mismatched_data(tmp_path):
    train = synthetic_dataset(4, seed=0)
    at_32px = CLASSIFIER_PRESETS["tiny"]()  # expects 32×32 images, gets 16×16
    with pytest.raises(DataError, match="expects"):
        train_classifier(at_32px, None, tmp_path, progress=False, train_data=train, test_data=train)
    unlabelled = ImageDataset(train.images, None, [])
    with pytest.raises(DataError, match="no labels"):
        train_classifier(tiny_config(), None, tmp_path, progress=False, train_data=unlabelled, test_data=train)
    with pytest.raises(DataError, match="3 classes"):
        train_classifier(apply_overrides(tiny_config(), ["model.num_classes=4"]), None, tmp_path, progress=False,
                         train_data=train, test_data=train)
