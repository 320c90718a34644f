"""Tokenizer evaluation on held-out images: PSNR and SSIM on 8-bit images (data range 255,
torchmetrics' math, mean over images), and codebook usage / perplexity over the whole split."""
from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..data import ImageDataset
from ..images import to_uint8
from ..tokenizer.quantizer import code_histogram_stats
from ..tokenizer.vqgan import VQTokenizer


@torch.inference_mode()
def evaluate_tokenizer(model: VQTokenizer, data: ImageDataset, batch_size: int = 256,
                       device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Metrics of ``model`` on every image of ``data`` (uint8 in, uint8 reconstructions compared)."""
    from tqdm.auto import tqdm
    model = model.to(device).eval()
    counts = torch.zeros(model.codebook_size, dtype=torch.long)
    psnr_sum = ssim_sum = 0.0
    n = len(data)
    for i in tqdm(range(0, n, batch_size), disable=not progress, desc="eval"):
        x = data.images[i:i + batch_size].to(device)  # (b, C, H, W) uint8
        tokens = model.encode(x)  # (b, h, w)
        xr = to_uint8(model.decode(tokens)).float()  # (b, C, H, W) in [0, 255]
        xf = x.float()
        psnr_sum += float(peak_signal_noise_ratio(xr, xf, data_range=255.0, reduction="none", dim=(1, 2, 3)).sum())
        ssim_sum += float(structural_similarity_index_measure(xr, xf, data_range=255.0, reduction="none").sum())
        counts += torch.bincount(tokens.flatten().cpu(), minlength=model.codebook_size)
    perplexity, usage = code_histogram_stats(counts)
    return {"psnr": psnr_sum / n, "ssim": ssim_sum / n, "codebook_usage": float(usage),
            "perplexity": float(perplexity), "codebook_size": model.codebook_size, "n_images": n}
