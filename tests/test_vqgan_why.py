"""benchmarks/vqgan_why.py: its decoder fine-tuning must change the decoder only, so that the tokens, and
the content they carry, are the same with and without the GAN."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from vqgan_why import finetune_decoder  # noqa: E402

from conftest import synthetic_images  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, GANConfig  # noqa: E402


@pytest.mark.parametrize("gan", [None, GANConfig(weight=0.5, n_layers=2, ndf=8)], ids=["l2", "l2_gan"])
def test_only_the_decoder_trains_and_the_tokens_stay(gan):
    torch.manual_seed(0)
    model = VQTokenizer(TOKENIZER_PRESETS["tiny"]().model).eval()
    images = synthetic_images(32).images  # (32, 1, 16, 16) uint8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune_decoder(model, images, steps=3, gan=gan, batch=8)

    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    after = tuned.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert torch.equal(tuned.encode(images), model.encode(images))
    assert not torch.equal(tuned.decode(model.encode(images[:4])), model.decode(model.encode(images[:4])))


def test_steps_must_be_positive():
    model = VQTokenizer(TOKENIZER_PRESETS["tiny"]().model)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        finetune_decoder(model, synthetic_images(8).images, steps=0, gan=None)
