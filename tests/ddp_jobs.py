"""Training jobs that tests/test_distributed.py runs under torchrun (2 ranks, gloo) and in one process.

    python tests/ddp_jobs.py OUT JOB [JOB ...]                                  # one process
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_jobs.py OUT JOB ...

Each rank trains with the library's own loop and writes what it saw to ``OUT/JOB.world{W}.rank{R}.pt``:
its loss at every step (as the loop's finite check sees it: this rank's share of the global batch) and
its final model state (codebook, EMA statistics and all). Jobs:

* ``tokenizer-kmeans``: the tiny tokenizer preset as it is (k-means init from rank 0's shard, dead-code
  restarts, EMA): the codebook state every rank must hold identically.
* ``tokenizer-restarts``: the same with every code dead at every step and more codes than a rank's
  vectors, so that each step restarts a random subset of them.
* ``tokenizer``: the same without k-means init and restarts, which draw from rank 0's shard by design
  (so they differ from one process on the whole batch): the run to compare with one process.
* ``prior``: the tiny prior (3 classes over 32 codes) without condition dropout, whose draws come from
  each rank's own RNG (so a masked sample differs between world sizes).
* ``classifier``: the tiny judge classifier on three synthetic patterns, with flips and crops (drawn for
  the global batch, then sliced).
* ``shapes-judge``: the tiny shapes judge on its own renders.
* ``prior-fsdp``: the ``prior`` job sharded with FSDP (``loop.fsdp``), a checkpoint every 6 steps;
  ``prior-fsdp-resume`` the same into ``OUT/prior-fsdp-resume-{W}`` and ``prior-resume`` the same without
  FSDP into ``OUT/prior-resume-{W}`` (tests/test_fsdp.py puts a checkpoint there to resume from);
  ``prior-fsdp-compile`` sharded and ``loop.compile`` (dynamo's eager backend: inductor would compile
  C++ for minutes on a CPU).
* ``text2img-fsdp`` / ``text2img``: the tiny text-to-image model (no caption dropout) on the captioned
  tokens in ``OUT/t2i-tokens`` (tests/test_fsdp.py writes them), with and without FSDP;
  ``text2img-bart-fsdp`` sharded with the frozen pretrained encoder saved in ``OUT/bart``.
Under FSDP, ranks other than 0 hold shards, not a model: they write their losses only.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from conftest import synthetic_images  # noqa: E402  (tests/ is the script's folder)
from vqgen.config import apply_overrides  # noqa: E402
from vqgen.data.tokens import TokenDataset  # noqa: E402
from vqgen.eval.judge import JudgeClassifier  # noqa: E402
from vqgen.eval.shapes_judge import ShapesJudge  # noqa: E402
from vqgen.train import classifier as classifier_train  # noqa: E402
from vqgen.train import prior as prior_train  # noqa: E402
from vqgen.train import shapes_judge as shapes_judge_train  # noqa: E402
from vqgen.train import text2img as text2img_train  # noqa: E402
from vqgen.train import tokenizer as tokenizer_train  # noqa: E402
from vqgen.tokenizer.quantizer import VectorQuantizer  # noqa: E402
from vqgen.train.common import is_sharded  # noqa: E402

STEPS = 12


def token_dataset(n: int = 64) -> TokenDataset:
    """Labelled 4×4 grids over 32 ids: class k uses ids 8k .. 8k+7."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3  # (n,)
    grids = (labels[:, None, None] * 8 + torch.randint(0, 8, (n, 4, 4), generator=g)).long()  # (n, 4, 4)
    return TokenDataset(grids, labels, {"vocab_size": 32, "class_names": ["a", "b", "c"], "source": "synthetic"})


def recording(module, losses: list[tuple[int, float]]) -> None:
    """Make ``module``'s loop note every loss its finite check sees."""
    real = module.check_finite

    def check(loss: torch.Tensor, step: int, run_dir: Path) -> None:
        losses.append((step, float(loss)))
        real(loss, step, run_dir)

    module.check_finite = check


def run(job: str, out: Path) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    losses: list[tuple[int, float]] = []
    loop = [f"loop.max_steps={STEPS}", f"loop.save_every={STEPS}"]
    if job.startswith("tokenizer"):
        extra = {"tokenizer-kmeans": [],
                 # every code dead at every step, and more of them (256) than a rank's 128 vectors: a random
                 # subset restarts, drawn on rank 0 and broadcast
                 "tokenizer-restarts": ["model.quantizer.codebook_size=256", "model.quantizer.dead_code_threshold=1000"],
                 }.get(job, ["model.quantizer.kmeans_init=false", "model.quantizer.dead_code_threshold=0"])
        cfg = apply_overrides(tokenizer_train.TOKENIZER_PRESETS["tiny"](), loop + extra)
        real_restart = VectorQuantizer._restart_dead
        if job == "tokenizer-restarts":  # ranks whose random streams differ (as with per-rank augmentation)
            def restart(self, z):
                torch.manual_seed(1000 + rank)
                real_restart(self, z)

            VectorQuantizer._restart_dead = restart
        recording(tokenizer_train, losses)
        try:
            model = tokenizer_train.train_tokenizer(cfg, out / f"{job}-{world}", train_data=synthetic_images(64),
                                                    progress=False)
        finally:
            VectorQuantizer._restart_dead = real_restart
    elif job == "prior" or job.startswith("prior-"):
        fsdp = ["loop.save_every=6", f"loop.fsdp={str(job != 'prior-resume').lower()}"] if job != "prior" else []
        real = torch.compile
        if job == "prior-fsdp-compile":
            fsdp.append("loop.compile=true")
            torch.compile = lambda module, **kwargs: real(module, backend="eager", **kwargs)
        cfg = apply_overrides(prior_train.PRIOR_PRESETS["tiny"](), loop + [
            "model.vocab_size=32", "model.num_classes=3", "model.cond_drop_prob=0"] + fsdp)
        recording(prior_train, losses)
        try:
            model, _ = prior_train.train_prior(cfg, out / f"{job}-{world}", train_data=token_dataset(), progress=False)
        finally:
            torch.compile = real
    elif job.startswith("text2img"):
        cfg = apply_overrides(text2img_train.TEXT2IMG_PRESETS["tiny"](), loop + [
            f"tokens={out / 't2i-tokens'}", "model.caption_drop_prob=0", "model.guidance_scale=1",
            f"loop.fsdp={str(job.endswith('-fsdp')).lower()}"] + (
            [f"text_encoder_path={out / 'bart'}", "model.freeze_text_encoder=true"] if "bart" in job else []))
        recording(text2img_train, losses)
        model, _, _ = text2img_train.train_text2img(cfg, out / f"{job}-{world}", progress=False)
    elif job == "classifier":
        from test_judge import synthetic_dataset, tiny_config
        cfg = tiny_config(batch_size=16, augment=True, crop_padding=2, epochs=2)
        recording(classifier_train, losses)
        classifier_train.train_classifier(cfg, None, out / f"{job}-{world}", progress=False,
                                          train_data=synthetic_dataset(24, seed=0), test_data=synthetic_dataset(8, seed=1))
        model = JudgeClassifier.from_pretrained(out / f"{job}-{world}") if rank == 0 else None
    elif job == "shapes-judge":
        cfg = apply_overrides(shapes_judge_train.SHAPES_JUDGE_PRESETS["tiny"](), loop + ["eval_renders=8"])
        recording(shapes_judge_train, losses)
        shapes_judge_train.train_shapes_judge(cfg, out / f"{job}-{world}", progress=False)
        model = ShapesJudge.from_pretrained(out / f"{job}-{world}") if rank == 0 else None
    else:
        raise SystemExit(f"unknown job {job!r}")
    if model is None or is_sharded(model):  # only rank 0 exports the judges, or holds a sharded model whole
        torch.save({"losses": losses, "state": {}}, out / f"{job}.world{world}.rank{rank}.pt")
        return
    torch.save({"losses": losses, "state": model.state_dict()}, out / f"{job}.world{world}.rank{rank}.pt")


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name in sys.argv[2:]:
        run(name, root)
