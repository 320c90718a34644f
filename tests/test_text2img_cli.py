"""Text to image through the command line, end to end on a tiny captioned manifest, and its user errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.cli import main
from vqgen.data.records import write_records
from vqgen.data.shapes import load_shapes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny tokenizer, tokens, text-to-image model, CLIP and judge, all made through the CLI."""
    root = tmp_path_factory.mktemp("t2i")
    data = load_shapes(0, "train", resolution=16, n=48, progress=False)
    lines = []
    for i, (img, cap) in enumerate(zip(data.images, data.captions)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": cap}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    write_records(root / "records.jsonl", data.records[:4])
    spec = f"manifest:{root / 'manifest.jsonl'}"
    rgb = ["--set", "model.autoencoder.in_channels=3"]
    torch.manual_seed(0)
    assert main(["train", "tokenizer", "--config", "tiny", "--data", spec, "--out", str(root / "tok"), "--no-progress",
                 "--max-steps", "4", *rgb]) == 0
    assert main(["encode", "--tokenizer", str(root / "tok"), "--data", spec, "--out", str(root / "tokens"),
                 "--no-progress"]) == 0
    assert main(["train", "text2img", "--config", "tiny", "--tokens", str(root / "tokens"), "--out", str(root / "t2i"),
                 "--no-progress", "--max-steps", "4"]) == 0
    assert main(["train", "clip", "--config", "tiny", "--data", spec, "--out", str(root / "clip"), "--no-progress",
                 "--max-steps", "4"]) == 0
    assert main(["train", "shapes-judge", "--config", "tiny", "--out", str(root / "judge"), "--no-progress",
                 "--set", "model.resolution=16", "--set", "model.patch=2"]) == 0
    return root


def test_generate_writes_the_kept_candidates_with_captions(trained, capsys):
    out = trained / "out.png"
    assert main(["generate", "a red circle", "a blue square on the left", "--model", str(trained / "t2i"),
                 "--clip", str(trained / "clip"), "--n", "4", "--keep", "2", "--out", str(out)]) == 0
    assert "best 2 of 4 by CLIP score" in capsys.readouterr().out
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 2 * 16 * 4 and img.shape[1] > 2 * 16 * 4  # 2 rows × 2 kept, enlarged, captions below


def test_eval_text2img_on_a_user_caption_file(trained, capsys):
    report_file = trained / "report.json"
    assert main(["eval", "text2img", str(trained / "t2i"), "--clip", str(trained / "clip"), "--judge",
                 str(trained / "judge"), "--captions", str(trained / "records.jsonl"), "--candidates", "2",
                 "--report", str(report_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == json.loads(report_file.read_text())
    assert report["n_captions"] == 4 and report["heldout"]["no_rerank"] is None
    for group in ("single", "two"):
        assert set(report[group]) == {"no_rerank", "rerank8", "no_rerank_guided", "rerank8_guided"}


@pytest.mark.parametrize("argv, message", [
    (["generate", "   ", "--n", "2"], "caption is empty"),
    (["generate", "a red circle", "--n", "0"], "--n must be at least 1"),
    (["generate", "a red circle", "--n", "2", "--keep", "3"], "--keep must be between 1 and --n"),
    (["generate", "a red circle", "--n", "4", "--keep", "2"], "give --clip"),
])
def test_generate_refuses_bad_arguments_in_one_line(trained, capsys, argv, message):
    argv = argv + ["--model", str(trained / "t2i"), "--out", str(trained / "never.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqgen: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (trained / "never.png").exists()


def test_wrong_kind_of_run_directory_is_named(trained, capsys):
    assert main(["generate", "a red circle", "--model", str(trained / "tok"), "--out", str(trained / "x.png")]) == 2
    assert "holds a 'tokenizer' model, not a 'text2img' model" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", str(trained / "t2i"), "--clip", str(trained / "t2i"),
                 "--n", "2", "--out", str(trained / "x.png")]) == 2
    assert "not a CLIP directory" in capsys.readouterr().err
    assert main(["sample", "--prior", str(trained / "t2i"), "--out", str(trained / "x.png")]) == 2
    assert "text2img" in capsys.readouterr().err


def test_over_long_caption_is_truncated_with_a_warning(trained):
    with pytest.warns(UserWarning, match="truncated"):
        assert main(["generate", "a red circle " * 30, "--model", str(trained / "t2i"), "--n", "1",
                     "--out", str(trained / "long.png")]) == 0


def test_sampling_defaults_come_from_the_run(trained):
    """generate_candidates takes the run's recorded guidance scale and temperature when given none."""
    from vqgen.text.generate import generate_candidates, load_text2img_run
    run = load_text2img_run(trained / "t2i")
    run.model.config.guidance_scale, run.model.config.temperature = 1.0, 0.25
    default = generate_candidates(run, ["a red circle"], 3, seed=1)  # (1, 3, C, H, W)
    assert torch.equal(default, generate_candidates(run, ["a red circle"], 3, guidance_scale=1.0, temperature=0.25,
                                                    seed=1))
    assert not torch.equal(default, generate_candidates(run, ["a red circle"], 3, temperature=4.0, seed=1))
