"""Running the judge classifier over uint8 images: predicted labels, features and test accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import DataError
from .judge import JudgeClassifier, to_model_range

if TYPE_CHECKING:
    from ..data import ImageDataset


def judge_predictions(judge: JudgeClassifier, images: torch.Tensor,
                      batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted labels int64 (N,) and features float32 (N, feature_dim), both on the CPU.

    ``images`` are uint8 (N, C, H, W) in the judge's channels and resolution. The judge runs in eval
    mode (its previous mode is restored) on whatever device its parameters are on.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"judge_predictions expects uint8 (N, C, H, W) images, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(judge.parameters()).device
    was_training = judge.training
    judge.eval()
    labels, features = [], []
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = to_model_range(images[start:start + batch_size].to(device))  # (b, C, H, W) in [-1, 1]
                f = judge.features(x)  # (b, feature_dim)
                labels.append(judge.classify(f).argmax(dim=1).cpu())  # (b,)
                features.append(f.float().cpu())
    finally:
        judge.train(was_training)
    if not labels:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, judge.num_features)
    return torch.cat(labels), torch.cat(features)


def accuracy_report(judge: JudgeClassifier, data: "ImageDataset", batch_size: int = 512) -> dict:
    """Accuracy of ``judge`` on a labelled dataset, overall and per class."""
    if data.labels is None:
        raise DataError(f"{data.source or 'dataset'} has no labels; the judge needs labelled images")
    if len(data) == 0:
        raise DataError(f"{data.source or 'dataset'} is empty")
    pred, _ = judge_predictions(judge, data.images, batch_size)
    correct = pred == data.labels  # (N,) bool
    names = data.class_names or [str(i) for i in range(judge.config.num_classes)]
    per_class = {}
    for k, name in enumerate(names):
        mask = data.labels == k
        if mask.any():
            per_class[name] = correct[mask].float().mean().item()
    return {
        "accuracy": correct.float().mean().item(),
        "n_images": len(data),
        "per_class_accuracy": per_class,
    }


def evaluate_classifier(judge_dir: str | Path, data_spec: "str | ImageDataset", split: str = "test",
                        batch_size: int = 512, progress: bool = False) -> dict:
    """Accuracy of a saved judge on a dataset spec (loaded at the judge's resolution) or an ImageDataset.

    Returns ``{"accuracy", "n_images", "per_class_accuracy", "judge_dir", "data", "split"}``.
    """
    judge = JudgeClassifier.from_pretrained(judge_dir)
    if isinstance(data_spec, str):
        from ..data import load_images

        data = load_images(data_spec, split=split, resolution=judge.config.resolution,
                           channels=judge.config.channels, progress=progress)
        source = data_spec
    else:
        data, source = data_spec, data_spec.source
    report = accuracy_report(judge, data, batch_size)
    return {**report, "judge_dir": str(judge_dir), "data": source, "split": split}
