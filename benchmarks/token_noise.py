"""Does the text-to-image model learn where to draw from the caption, or from the codes it is given?

    python benchmarks/token_noise.py --json [--probs 0,0.15,0.3,0.5] [--n-captions 200] [--work DIR] [--out FILE]

Trains the ``shapes`` text-to-image preset once per token-noise probability (``model.token_noise_prob``:
during training each image token the decoder reads is replaced by a random code with that probability;
the targets stay the true tokens) on the tokens of the ``shapes`` tokenizer preset, and reports for each:

* what ``vqgen eval text2img --n-captions N`` reports (judge verdicts at the run's sampling defaults);
* ``position_probe`` (``probes.py``): the model's likelihood used as a classifier. For every test caption of one object
  that states its position, the position phrase is swapped for each of the 9 and the caption under which
  the true image tokens are most likely wins. ``accuracy`` is the share where it is the true one, ``row``
  and ``col`` the shares where its row or its column is right (chance 1/9, 1/3, 1/3).

The tokenizer's codes above an object already show it (its receptive field spans several cells), so a
model trained on clean inputs can read from them which column the object stands in; the probe tells
whether it learned that from the caption. All runs sample at the preset's defaults. The work directory
is ``benchmarks/shapes_tokenizers.py``'s: its ``fsq888-local`` tokenizer, tokens, CLIP and judge (trained
when missing); a text-to-image run found there (``fsq888-local/text2img-noiseP``) is used as it is.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, machine, write_result  # noqa: E402
from probes import position_probe  # noqa: E402
from shapes_tokenizers import judge_and_clip, judged  # noqa: E402

from vqgen.config import apply_overrides  # noqa: E402
from vqgen.data.encode import encode_dataset  # noqa: E402
from vqgen.prior.codec import TokenizerCodec  # noqa: E402
from vqgen.text.bpe import CaptionTokenizer  # noqa: E402
from vqgen.text.dalle import TextToImage  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402
from vqgen.train.text2img import TEXT2IMG_PRESETS, train_text2img  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--probs", default="0,0.15,0.3,0.5", help="token-noise probabilities, one run each")
    ap.add_argument("--n-captions", type=int, default=200)
    ap.add_argument("--work", default=str(RUNS / "bench-shapes-tokenizers"))
    ap.add_argument("--out")
    args = ap.parse_args()
    progress = not args.json
    work = Path(args.work)
    judge, clip_dir = judge_and_clip(work, progress)
    tok_dir, tokens = work / "fsq888-local" / "tokenizer", work / "fsq888-local" / "tokens"
    train_tokenizer(TOKENIZER_PRESETS["shapes"](), tok_dir, data="shapes", progress=progress)
    encode_dataset(TokenizerCodec(VQTokenizer.from_pretrained(tok_dir), str(tok_dir)), "shapes", tokens,
                   progress=progress)  # finished shards are skipped

    preset = TEXT2IMG_PRESETS["shapes"]().model
    runs = {}
    for prob in [float(p) for p in args.probs.split(",")]:
        run_dir = work / "fsq888-local" / f"text2img-noise{prob:g}"
        if not (run_dir / "model.safetensors").exists():
            cfg = apply_overrides(TEXT2IMG_PRESETS["shapes"](), [f"model.token_noise_prob={prob}"])
            train_text2img(cfg, run_dir, tokens=str(tokens), progress=progress)
        model = TextToImage.from_pretrained(run_dir)
        if model.config.token_noise_prob != prob:
            raise SystemExit(f"{run_dir} was trained with token_noise_prob {model.config.token_noise_prob}, not {prob}")
        runs[f"{prob:g}"] = {**judged(run_dir, clip_dir, judge, args.n_captions, preset.guidance_scale,
                                      preset.temperature),
                             "position_probe": position_probe(model, CaptionTokenizer.load(run_dir), tokens)}
        print(prob, json.dumps(runs[f"{prob:g}"]), file=sys.stderr, flush=True)

    write_result("token_noise", {"runs": runs, "preset": "shapes", "n_captions": args.n_captions,
                                 "machine": machine(),
                                 "note": "shapes:0 (procedural); one run per probability; first N test captions",
                                 "command": " ".join(["python"] + sys.argv)}, args.out)


if __name__ == "__main__":
    main()
