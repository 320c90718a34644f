import math

import pytest
import torch

from vqgen.tokenizer.quantizer import FSQuantizer, QuantizerConfig, VectorQuantizer, kmeans, rotate_to


def _z(b=4, c=8, h=3, w=3, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_lookup_picks_the_nearest_code_and_straight_through_passes_gradients():
    q = VectorQuantizer(8, QuantizerConfig(codebook_size=16)).eval()
    z = _z().requires_grad_(True)
    out = q(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    expected = torch.cdist(flat, q.embed.detach()).argmin(1)
    assert torch.equal(out.indices.flatten(), expected)
    assert torch.allclose(out.z_q, q.embed[out.indices].permute(0, 3, 1, 2), atol=1e-6)
    out.z_q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity gradient (straight-through)


def test_rotation_trick_is_exact_forward_and_rotates_gradients_backward():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(32, 6, generator=g).requires_grad_(True)
    q = torch.randn(32, 6, generator=g) * 3
    out = rotate_to(e, q)
    assert torch.equal(out, q)  # the forward value is the code, bit for bit
    # Backward is λ·Rᵀ with R the rotation taking ê to q̂ and λ = ‖q‖/‖e‖: a gradient along q̂ arrives
    # at e along ê, scaled by λ — straight through would copy it unchanged.
    q_hat = q / q.norm(dim=1, keepdim=True)
    out.backward(q_hat)
    scale = (q.norm(dim=1) / e.detach().norm(dim=1)).unsqueeze(1)
    assert torch.allclose(e.grad, scale * e.detach() / e.detach().norm(dim=1, keepdim=True), atol=1e-5)
    # Rotations keep lengths: any incoming gradient's norm is only rescaled by λ.
    e.grad = None
    upstream = torch.randn(32, 6, generator=g)
    rotate_to(e, q).backward(upstream)
    assert torch.allclose(e.grad.norm(dim=1), scale.squeeze(1) * upstream.norm(dim=1), rtol=1e-4)


def test_quantizer_with_the_rotation_trick_sends_other_gradients_than_straight_through():
    z = _z().requires_grad_(True)
    base = VectorQuantizer(8, QuantizerConfig(codebook_size=16, code_dim=4, l2_normalize=True))
    rot = VectorQuantizer(8, QuantizerConfig(codebook_size=16, code_dim=4, l2_normalize=True, rotation_trick=True))
    rot.load_state_dict(base.state_dict())
    outs = []
    for q in (base, rot):
        out = q(z)
        (out.z_q ** 2).sum().backward()
        outs.append((out.z_q.detach(), z.grad.clone()))
        z.grad = None
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)  # same forward
    assert not torch.allclose(outs[0][1], outs[1][1], atol=1e-3)  # different backward


def test_beta_weights_the_commitment_term_not_the_codebook_term():
    """The taming 'legacy' defect put beta on the codebook term; here the encoder gets beta."""
    z = _z().requires_grad_(True)
    q = VectorQuantizer(8, QuantizerConfig(codebook_size=16, beta=0.25))
    out = q(z)
    out.loss.backward()
    e = q.embed.detach()[out.indices.flatten()]
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    n = flat.numel()
    # d/dz of beta·mean((z − sg e)²) = 2·beta·(z − e)/n ; d/de of mean((sg z − e)²) = 2(e − z)/n.
    z_grad = z.grad.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.allclose(z_grad, 2 * 0.25 * (flat - e) / n, atol=1e-7)
    used = out.indices.flatten().unique()
    expect_e = torch.zeros_like(q.embed).index_add_(0, out.indices.flatten(), 2 * (e - flat) / n)
    assert torch.allclose(q.embed.grad[used], expect_e[used], atol=1e-7)


def test_ema_codebook_moves_towards_assigned_vectors_without_gradients():
    cfg = QuantizerConfig(codebook_size=4, ema_decay=0.5)
    q = VectorQuantizer(2, cfg).train()
    assert not any(n == "embed" for n, _ in q.named_parameters())
    z = torch.tensor([[3.0, 3.0]]).view(1, 2, 1, 1).repeat(8, 1, 1, 1)  # all points at (3, 3)
    for _ in range(20):
        out = q(z)
    assert torch.allclose(q.embed[out.indices[0, 0, 0]], torch.tensor([3.0, 3.0]), atol=1e-2)
    assert out.loss.item() == pytest.approx(0.25 * out.commitment.item())  # no codebook term


def test_kmeans_init_runs_once_on_the_first_training_batch():
    torch.manual_seed(0)
    centers = torch.tensor([[5.0, 0], [-5, 0], [0, 5], [0, -5]])
    pts = centers.repeat_interleave(25, 0) + 0.01 * torch.randn(100, 2)
    z = pts.view(100, 2, 1, 1)
    q = VectorQuantizer(2, QuantizerConfig(codebook_size=4, kmeans_init=True, kmeans_iters=10)).train()
    assert not bool(q.initialized)
    q(z)
    assert bool(q.initialized)
    found = sorted(map(tuple, q.embed.detach().round().tolist()))
    assert found == sorted(map(tuple, centers.tolist()))
    before = q.embed.detach().clone()
    q.eval()(z * 2)
    assert torch.equal(q.embed.detach(), before)


def test_kmeans_function_recovers_clusters():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(50, 3, generator=g) * 0.05 + c for c in (-3.0, 0.0, 3.0)])
    cent = kmeans(x, 3, 10, generator=torch.Generator().manual_seed(0))
    assert sorted(cent.mean(1).round().tolist()) == [-3.0, 0.0, 3.0]


def test_dead_codes_are_restarted_to_encoder_outputs():
    cfg = QuantizerConfig(codebook_size=8, dead_code_threshold=0.5, usage_decay=0.5)
    q = VectorQuantizer(2, cfg).train()
    torch.manual_seed(0)
    z = (torch.randn(64, 2) * 0.1 + 10).view(64, 2, 1, 1)  # far from every initial code
    for _ in range(15):
        q(z)
    # Codes stop being chosen, their running count decays below the threshold and they are
    # moved onto the data; in the end no code is left at its initial place near 0.
    assert (q.embed.detach() - 10).abs().max() < 1.0


def test_a_batch_is_quantized_to_the_codes_it_chose_before_ema_and_restarts_move_them():
    # Threshold far above any count: every code is restarted in this very step, and EMA moves them too.
    cfg = QuantizerConfig(codebook_size=8, ema_decay=0.9, dead_code_threshold=100.0)
    q = VectorQuantizer(4, cfg).train()
    z = _z(c=4)
    before = q.codebook().clone()  # (K, D)
    out = q(z)
    assert not torch.allclose(q.codebook(), before)  # the step did move the codebook
    assert torch.allclose(out.z_q, before[out.indices].permute(0, 3, 1, 2), atol=1e-6)


def test_l2_codes_are_unit_norm_and_projections_set_the_lookup_dim():
    cfg = QuantizerConfig(codebook_size=16, code_dim=4, l2_normalize=True)
    q = VectorQuantizer(8, cfg)
    assert q.embed.shape == (16, 4)
    out = q(_z())
    assert torch.allclose(q.codebook().norm(dim=1), torch.ones(16), atol=1e-5)
    assert out.z_q.shape == (4, 8, 3, 3)
    lat = q.codes_to_latents(out.indices)
    assert torch.allclose(lat, out.z_q, atol=1e-5)


def test_perplexity_and_usage_of_a_batch():
    q = VectorQuantizer(2, QuantizerConfig(codebook_size=4)).eval()
    with torch.no_grad():
        q.embed.copy_(torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]]))
    z = torch.tensor([[1.0, 0], [-1, 0]]).view(2, 2, 1, 1)
    out = q(z)
    assert out.usage.item() == 0.5 and out.perplexity.item() == pytest.approx(2.0)


def test_codes_to_latents_rejects_out_of_range_ids():
    q = VectorQuantizer(2, QuantizerConfig(codebook_size=4))
    with pytest.raises(ValueError, match="token ids"):
        q.codes_to_latents(torch.tensor([[[4]]]))


def test_fsq_has_prod_levels_codes_and_decodes_its_own_indices():
    cfg = QuantizerConfig(kind="fsq", fsq_levels=(8, 5, 5, 5))
    q = FSQuantizer(16, cfg)
    assert q.codebook_size == math.prod((8, 5, 5, 5))
    z = _z(b=8, c=16) * 3
    out = q(z)
    assert out.indices.min() >= 0 and out.indices.max() < q.codebook_size
    assert torch.allclose(q.codes_to_latents(out.indices), out.z_q, atol=1e-5)
    assert out.loss.item() == 0.0
    # Every one of the 8 levels of the first dim is reachable.
    big = torch.linspace(-6, 6, 200).view(200, 1).repeat(1, 4)
    q.proj_in.weight.data.zero_()
    q.proj_in.bias.data.zero_()
    levels = torch.round(q._bound(big))[:, 0].unique()
    assert levels.tolist() == list(range(-4, 4))


def test_fsq_lookup_space_agrees_with_its_forward():
    """The lookup-space view CLIP-guided generation uses: projecting and looking up gives the forward's ids,
    and an id's grid point, projected out, is the latent codes_to_latents gives."""
    q = FSQuantizer(16, QuantizerConfig(kind="fsq", fsq_levels=(8, 5, 3)))
    z = _z(b=4, c=16) * 3  # (B, C, h, w)
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 16)  # (N, C)
    assert torch.equal(q.lookup(q._project(flat)), out.indices.flatten())
    book = q.codebook()  # (K, d)
    assert book.shape == (8 * 5 * 3, 3) and book.min() >= -1 and book.max() <= 1
    assert book.unique(dim=0).shape[0] == q.codebook_size  # every id its own point
    assert torch.equal(q.lookup(book), torch.arange(q.codebook_size))  # each point is its own nearest code
    assert torch.equal(q.lookup(book * 7), q.lookup(book.sign() * 7))  # far outside the box: the edge levels
    ids = out.indices[:1]  # (1, h, w)
    assert torch.allclose(q.proj_out(book[ids]).permute(0, 3, 1, 2), q.codes_to_latents(ids), atol=1e-6)


def test_fsq_gradients_flow_through_rounding():
    q = FSQuantizer(16, QuantizerConfig(kind="fsq", fsq_levels=(5, 5, 5)))
    z = _z(c=16).requires_grad_(True)
    q(z).z_q.square().sum().backward()
    assert z.grad.abs().sum() > 0


def test_config_validation():
    with pytest.raises(ValueError):
        QuantizerConfig(kind="lfq")
    with pytest.raises(ValueError):
        QuantizerConfig(kind="fsq", fsq_levels=(1, 4))
    with pytest.raises(ValueError):
        VectorQuantizer(4, QuantizerConfig(kind="fsq"))


def test_kmeans_init_starts_the_running_counts_at_the_cluster_sizes():
    # Two tight clusters of 48 and 16 vectors: the counts start at those sizes, so that a restart threshold
    # above 1 (here 2) does not restart every code right after k-means, as counts of 1 would.
    cfg = QuantizerConfig(codebook_size=2, ema_decay=0.99, kmeans_init=True, dead_code_threshold=2.0)
    q = VectorQuantizer(2, cfg).train()
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(48, 2, generator=g) * 0.01 + 5, torch.randn(16, 2, generator=g) * 0.01 - 5])
    q(z.view(64, 2, 1, 1))
    assert sorted(q.ema_count.tolist()) == pytest.approx([16, 48], abs=0.5)
    assert sorted(q.usage_count.tolist()) == pytest.approx([16, 48], abs=0.5)
    assert sorted(q.embed[:, 0].round().tolist()) == [-5.0, 5.0]  # the k-means centroids survived step 0


def test_restarts_draw_distinct_vectors_and_restart_counts_at_the_threshold():
    cfg = QuantizerConfig(codebook_size=16, ema_decay=0.9, dead_code_threshold=3.0)
    q = VectorQuantizer(2, cfg).train()
    with torch.no_grad():
        q.usage_count.zero_()  # every code dead
    z = torch.arange(20, dtype=torch.float32).view(10, 2)  # 10 distinct vectors for 16 dead codes
    q._restart_dead(z)
    moved = [tuple(row) for row in q.embed.tolist() if tuple(row) in {tuple(v) for v in z.tolist()}]
    assert len(moved) == 10 and len(set(moved)) == 10  # as many codes as vectors, no vector used twice
    restarted = q.usage_count == 3.0
    assert int(restarted.sum()) == 10  # the other 6 wait for a later batch
    assert torch.equal(q.ema_count[restarted], torch.full((10,), 3.0))
    assert torch.allclose(q.ema_sum[restarted], 3.0 * q.embed[restarted])
