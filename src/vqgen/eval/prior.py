"""Prior evaluation that tells the truth: test NLL, and the judge classifier's verdict on samples.

* ``test_bits_per_token``: NLL of held-out token grids.
* ``judge_accuracy``: share of class-conditional samples that the judge classifies as the class asked.
* ``fd``: Fréchet distance between judge features of samples and of test images — the judge's FD,
  not Inception FID (numbers are not comparable with published FIDs).
* ``fd_reconstructions``: the same FD for codec reconstructions of the test images: the floor a prior
  can reach with this tokenizer (or palette).
* ``samples_per_s``: images per second, sampling + decoding, batch of ``batch_size``.
* ``guidance_scale``: the classifier-free guidance scale of the samples (judge accuracy, FDs and speed
  are at this scale); by default the run's recommended one (``PriorConfig.default_guidance``: 2 for a
  prior trained with condition dropout, 1 otherwise).
* ``fid_inception`` (only when ``inception`` is given, see ``vqgen.eval.inception``): standard FID,
  Inception-v3 pool3 features of the samples vs the first ``n_reference`` test images, both at the
  codec's resolution and channels (upsampled to 299×299 by the network).
"""
from __future__ import annotations

import time

import torch

from ..data import load_images
from ..data.tokens import load_tokens
from ..prior.generate import PriorRun, default_guidance, generate
from ..prior.likelihood import bits_per_token
from .classifier import judge_predictions
from .fd import frechet_distance
from .inception import InceptionFeatures, inception_fid
from .judge import JudgeClassifier


def evaluate_prior(run: PriorRun, judge: JudgeClassifier, n_per_class: int = 100, guidance_scale: float | None = None,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int = 0, batch_size: int = 100, n_reference: int = 10000, n_test_grids: int | None = None,
                   inception: InceptionFeatures | None = None) -> dict:
    prior, codec = run.prior, run.codec
    test_tokens = load_tokens(run.tokens_dir, "test")
    bits_data = test_tokens
    if n_test_grids is not None:  # NLL on the first n test grids (pixel GPT NLL over 10 000 × 784 is slow on a CPU)
        bits_data = type(test_tokens)(test_tokens.tokens[:n_test_grids],
                                      None if test_tokens.labels is None else test_tokens.labels[:n_test_grids], test_tokens.meta)
    num_classes = prior.config.num_classes
    classes = num_classes if num_classes else 1
    n = n_per_class * classes
    cond = torch.arange(classes).repeat_interleave(n_per_class) if num_classes else None
    if guidance_scale is None:  # the run's recommended scale (PriorConfig.default_guidance)
        guidance_scale = default_guidance(run, cond is not None)
    t = time.perf_counter()
    samples = generate(run, n, cond=cond, guidance_scale=guidance_scale, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, batch_size=batch_size)
    seconds = time.perf_counter() - t
    # The judge sees images as the data loader gives them (e.g. 28×28 pixels padded to 32×32).
    test = load_images(test_tokens.meta["source"], "test", judge.config.resolution, judge.config.channels, progress=False)
    ref = test.images[:n_reference]
    pred, feats = judge_predictions(judge, _to_judge(samples, judge))
    _, ref_feats = judge_predictions(judge, ref)
    codec_test = load_images(test_tokens.meta["source"], "test", codec.resolution, codec.channels, progress=False)
    recon = torch.cat([codec.decode(codec.encode(codec_test.images[i:i + 500]))
                       for i in range(0, min(n_reference, len(codec_test)), 500)])
    _, recon_feats = judge_predictions(judge, _to_judge(recon, judge))
    bits = bits_per_token(prior, bits_data.tokens, bits_data.labels, device=next(prior.parameters()).device)
    out = {"test_bits_per_token": bits, "n_test_grids": len(bits_data), "fd": frechet_distance(feats, ref_feats),
           "fd_reconstructions": frechet_distance(recon_feats, ref_feats), "samples_per_s": n / seconds,
           "n_samples": n, "guidance_scale": guidance_scale, "fd_note": "judge-classifier FD, not Inception FID"}
    if inception is not None:
        out["fid_inception"] = inception_fid(samples, codec_test.images[:n_reference], inception)
    if num_classes:
        out["judge_accuracy"] = float((pred.cpu() == cond).float().mean())
    return out


def _to_judge(images: torch.Tensor, judge: JudgeClassifier) -> torch.Tensor:
    """Pad (centred, zeros) codec-sized images to the judge's resolution, as the data loader pads."""
    r = judge.config.resolution
    h = images.shape[-1]
    if h == r:
        return images
    if h > r:
        raise ValueError(f"images of {h}px are larger than the judge's {r}px")
    lo = (r - h) // 2
    return torch.nn.functional.pad(images, (lo, r - h - lo, lo, r - h - lo))
