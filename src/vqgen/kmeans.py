"""k-means, shared by the quantizer's codebook initialisation and the Image GPT pixel palette."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None,
           spherical: bool = False) -> torch.Tensor:
    """Lloyd's k-means on x (N, D) with k-means++ seeding (Arthur & Vassilvitskii 2007,
    https://dl.acm.org/doi/10.5555/1283383.1283494); returns centroids (k, D).
    Empty clusters keep their centroid."""
    n = x.shape[0]
    first = torch.randint(0, n, (1,), generator=generator).item()
    centroids = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)  # (N,) squared distance to the nearest chosen centroid
    for _ in range(1, k):
        w = d2.cpu() if float(d2.sum()) > 0 else torch.ones(n)  # all points coincide: pick uniformly
        pick = torch.multinomial(w, 1, generator=generator).item()
        centroids.append(x[pick])
        d2 = torch.minimum(d2, (x - x[pick]).pow(2).sum(1))
    c = torch.stack(centroids)  # (k, D)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(dim=1)  # (N,)
        sums = torch.zeros_like(c).index_add_(0, assign, x)  # (k, D)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)  # (k, 1)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        if spherical:
            new = F.normalize(new, dim=1)
        if torch.equal(new, c):
            break
        c = new
    return c
