"""Render docs/benchmarks.md from the JSON files in benchmarks/results/ (so the doc never holds a
number that no command produced).

    python benchmarks/report.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS  # noqa: E402


def load(name: str) -> dict | None:
    """A result, with its ``date``: as recorded by ``write_result``, or for results from before it recorded
    one, the day the file was last committed (none outside a git checkout)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    if "date" not in r:
        git = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=REPO,
                             capture_output=True, text=True)
        r["date"] = git.stdout.strip() if git.returncode == 0 else ""
    return r


def f(x, nd=2) -> str:
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else str(x)


def about(r: dict) -> list[str]:
    """A result's own caveat (its ``about``), as an italic line of its own, or nothing."""
    return [f"*{r['about'].rstrip('.')}.*", ""] if r.get("about") else []


def machine_line(r: dict) -> str:
    m = r["machine"]
    gpu = f"GPU {m['cuda']}, " if m.get("cuda") else ""
    when = f" Run {r['date']}." if r.get("date") else ""
    return f"Machine: {gpu}{m['processor']}, {m['torch_threads']} torch threads, torch {m['torch']}, {m['platform']}.{when}"


def tokenizer_section(lines: list[str]) -> None:
    r = load("tokenizer")
    if not r:
        return
    lines += ["## Stage 1: tokenizer quality (Fashion-MNIST test split)", "",
              f"Command: `{r['command']}`  ", machine_line(r) + "  ", f"Data: `{r['data']}` — {r['note']}.", "",
              "PSNR on 8-bit images (data range 255, mean over images), SSIM (torchmetrics), codebook usage = share of "
              "the 512 codes used on the 10 000 test images, perplexity of the test code histogram.", "",
              "| preset | quantizer | PSNR dB | SSIM | usage | perplexity | steps × batch | train s |",
              "|---|---|---|---|---|---|---|---|"]
    desc = {"fashion-mnist": "EMA, k-means init, dead-code restart, l2 16-d codes",
            "fashion-mnist-plain": "taming-style: codebook loss, none of the above"}
    for k in ("fashion-mnist", "fashion-mnist-plain"):
        if k in r:
            m = r[k]
            lines.append(f"| `{k}` | {desc[k]} | {f(m['psnr'])} | {f(m['ssim'], 3)} | {f(100 * m['codebook_usage'], 1)} % "
                         f"| {f(m['perplexity'], 1)} | {m['steps']} × {m['batch_size']} | {f(m['train_seconds'], 0)} |")
    lines += [""]
    from vqgen.config import to_dict
    from vqgen.train.tokenizer import TOKENIZER_PRESETS
    current = to_dict(TOKENIZER_PRESETS["fashion-mnist"]().model.quantizer)
    if "fashion-mnist" in r and r["fashion-mnist"].get("quantizer") != current:
        lines += ["The `fashion-mnist` run above was made with an earlier quantizer setting of the preset (before "
                  "issue 12's restart rule and rotation trick); the next section measures the current one.", ""]
    lines += ["![reconstructions](images/reconstructions.png)", ""]


def folder_section(lines: list[str]) -> None:
    r = load("folder_tokenizer")
    if not r:
        return
    lines += ["## Stage 1 on someone else's images (`folder:`)", "",
              f"Command: `{r['command']}`  ", machine_line(r) + "  ", f"Data: {r['data']} ({r['n_train']} training crops).", "",
              "| preset | PSNR dB | SSIM | usage | perplexity | held-out images | train s |", "|---|---|---|---|---|---|---|",
              f"| `{r['preset']}` (unchanged) | {f(r['psnr'])} | {f(r['ssim'], 3)} | {f(100 * r['codebook_usage'], 1)} % | "
              f"{f(r['perplexity'], 1)} | {r['n_images']} | {f(r['train_seconds'], 0)} |", ""]


def throughput_section(lines: list[str]) -> None:
    r = load("throughput")
    if not r:
        return
    lines += ["## Stage 1 training throughput", "", f"Command: `{r['command']}`  ", machine_line(r) + "  ",
              f"Large fp32 matmul (2048³) in the same run: {f(r['matmul_peak_gflops'], 1)} GFLOP/s. FLOPs counted by "
              "`torch.utils.flop_counter` (forward + backward, convolutions and matmuls).", "",
              "| preset | resolution | batch | params M | GFLOP/image | s/step | images/s | GFLOP/s | of matmul peak |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| `{row['preset']}` | {row['resolution']} | {row['batch']} | {row['params_M']} | {row['gflop_per_image']} "
                     f"| {row['seconds_per_step']} | {row['images_per_s']} | {row['achieved_gflops']} | "
                     f"{f(100 * row['fraction_of_matmul_peak'], 1)} % |")
    lines.append("")


def sampling_section(lines: list[str]) -> None:
    r = load("sampling")
    if not r:
        return
    lines += ["## Stage 2 sampling speed", "", f"Command: `{r.get('command', 'python benchmarks/sampling.py --json')}`  ",
              f"Machine: {r.get('machine')}, {r.get('torch_threads')} torch threads.", "",
              f"`{r.get('preset')}` shape, batch {r['batch']}, sequence {r['seq_len']} (condition + 64 tokens):", "",
              "| sampler | tokens/s | vs KV cache |", "|---|---|---|",
              f"| vqgen, KV cache | {f(r['kv_tokens_per_s'], 0)} | 1.00× |",
              f"| vqgen, naive (recompute the sequence) | {f(r['naive_tokens_per_s'], 0)} | "
              f"{f(r['naive_tokens_per_s'] / r['kv_tokens_per_s'])}× |",
              f"| Hugging Face GPT-2 `generate` (same shape) | {f(r['hf_tokens_per_s'], 0)} | "
              f"{f(r['hf_tokens_per_s'] / r['kv_tokens_per_s'])}× |", "",
              f"KV-cached sampler: {f(r['kv_gflops'], 1)} GFLOP/s against a {f(r['peak_gflops'], 1)} GFLOP/s fp32 matmul "
              "measured in the same run.", ""]


def prior_sections(lines: list[str]) -> None:
    r = load("vq_vs_pixels")
    if r:
        lines += ["## Stage 2: VQ prior vs pixel GPT at equal wall-clock", "", f"Command: `{r['command']}`  ",
                  machine_line(r) + "  ", f"{r['note']}.", "",
                  "| model | train s | steps | test bits/token | judge accuracy | judge FD | samples/s |",
                  "|---|---|---|---|---|---|---|"]
        for k, label in (("vq", "VQ prior (8×8 tokens)"), ("pixel", "pixel GPT (28×28, 16 levels)")):
            m = r[k]
            lines.append(f"| {label} | {f(m['train_seconds'], 0)} | {m['steps']} | {f(m['test_bits_per_token'], 3)} | "
                         f"{f(100 * m['judge_accuracy'], 1)} % | {f(m['fd'], 2)} | {f(m['samples_per_s'], 1)} |")
        lines += ["", f"Judge FD of codec reconstructions of test images (the floor): VQ {f(r['vq']['fd_reconstructions'])}, "
                  f"pixel palette {f(r['pixel']['fd_reconstructions'])}.", ""]
    g = load("prior_guidance")
    if g:
        lines += ["## Stage 2: classifier-free guidance (class-conditional VQ prior)", "", f"Command: `{g['command']}`  ",
                  machine_line(g) + "  ", f"{g['note']}. Test bits/token {f(g['test_bits_per_token'], 3)}; "
                  f"judge FD floor (reconstructions) {f(g['fd_reconstructions'])}.", "",
                  "| guidance scale | judge accuracy | judge FD | samples/s |", "|---|---|---|---|"]
        for row in g["rows"]:
            lines.append(f"| {row['guidance_scale']:g} | {f(100 * row['judge_accuracy'], 1)} % | {f(row['fd'])} | "
                         f"{f(row['samples_per_s'], 1)} |")
        lines += ["", "![samples, one row per class](images/samples.png)", ""]
    j = load("judge")
    if j:
        lines += ["## The judge classifier", "", f"Command: `{j['command']}`  ", f"Test accuracy {f(100 * j['accuracy'], 2)} % "
                  f"on {j['n_images']} test images (re-split copy).", ""]


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def text2img_sections(lines: list[str]) -> None:
    r = load("text2img")
    if r:
        lines += ["## Text to image on `shapes` (DALL·E-mini style)", "", f"Command: `{r['command']}`  ",
                  machine_line(r) + "  ", *about(r),
                  f"Data: {r['note']}. {r['n_captions']} test captions, "
                  f"{r['n_candidates']} candidates each; preset `{r['preset']}` "
                  f"({r['params_text2img'] / 1e6:.1f} M parameters).", "",
                  f"Judge (a separate per-cell classifier, never trained on generated images): "
                  f"{pct(r['judge_accuracy_on_renders'])} fully correct on the test renders. Fully correct = every "
                  "attribute the caption states is right (shape, colour, size, position, relation, object count). "
                  f"Guided = super-conditioning at scale {r['guidance_scale']:g}; every variant samples at temperature "
                  f"{r.get('temperature', 1.0):g} (the sweep's best pair below); rerank = CLIP's best of "
                  f"{r['n_candidates']}, from the same draws as the unranked first candidate.", "",
                  "| captions | no rerank | rerank | no rerank, guided | rerank, guided |", "|---|---|---|---|---|"]
        for g in ("single", "two", "heldout"):
            m = r[g]
            lines.append(f"| {g} | {pct(m['no_rerank'])} | {pct(m['rerank8'])} | {pct(m['no_rerank_guided'])} | "
                         f"{pct(m['rerank8_guided'])} |")
        lines += ["", "Per attribute (no rerank, guided): " + ", ".join(
            f"{k} {pct(v)}" for k, v in r["per_attribute"].items()) + ".", "",
                  f"Sampling sweep (first {r.get('sweep_captions', 200)} captions of the test split, one sample each, "
                  "fully correct):", "",
                  "| scale | temperature | single | two | held out | mean |", "|---|---|---|---|---|---|"]
        for row in r["guidance_sweep"]:
            lines.append(f"| {row['guidance_scale']:g} | {row.get('temperature', 1.0):g} | {pct(row['single'])} | "
                         f"{pct(row['two'])} | {pct(row['heldout'])} | {pct(row['mean'])} |")
        p = r.get("probes")
        if p:
            b, c, pos = p["binding"], p["clip_binding"], p["position"]
            lines += ["", "Probes (`benchmarks/probes.py`, no sampling): each model chooses between a true test caption "
                      "and a false one, the text-to-image model by its likelihood of the true image tokens, CLIP by its "
                      "score of the true render. Two-object captions against the same words with the objects' colours "
                      "swapped, their shapes swapped, or the relation reversed (chance 50 %); one-object captions "
                      "against the 8 other positions (chance 11 %).", "",
                      "| model | colours swapped | shapes swapped | relation reversed | position (of 9) |",
                      "|---|---|---|---|---|",
                      f"| text to image | {pct(b['color'])} | {pct(b['shape'])} | {pct(b['relation'])} | "
                      f"{pct(pos['accuracy'])} |",
                      f"| CLIP | {pct(c['color'])} | {pct(c['shape'])} | {pct(c['relation'])} | – |"]
        t = r["train_seconds"]
        total = ""
        if "total_seconds" in r:
            found = r.get("found_in_work")
            where = "reusing " + ", ".join(found) if found else "from an empty work directory"
            total = f"End to end, in one run, {where}: {f(r['total_seconds'] / 60, 1)} min. "
        lines += ["", total + "Training seconds, as recorded in each run (a run found finished in the work directory "
                  "is reused): " + ", ".join(f"{k} {f(v, 0) if v is not None else '–'}" for k, v in t.items()) +
                  f"; evaluation {f(r['eval_seconds'], 0)} s.", "", "![text to image](images/text2img.png)", ""]
    e = load("token_entropy")
    if e:
        c = e["cells"]
        lines += ["### What the prior is asked to model: the tokenizer's codes", "", f"Command: `{e['command']}`  ",
                  machine_line(e) + "  ", *about(e),
                  f"Over {e['n_grids']} training grids ({e['grid'][0]}×{e['grid'][1]}) of the benchmark's `shapes` "
                  f"tokenizer: {e['codes_used']} of {e['vocab_size']} codes in use, {e['entropy_bits']:g} bits of "
                  f"entropy per token (at most {e['max_entropy_bits']:g}). Cells that mostly show the plain "
                  "background still carry many codes: " + ", ".join(
                      f"{k} {v['distinct_codes']} distinct codes ({v['entropy_bits']:g} bits)" for k, v in c.items()) +
                  f". Changing only the colour or size of one circle in the bottom-right cell changes on average "
                  f"{e['far_object_changes_top_left_cells']:g} of the 9 top-left token cells "
                  f"({e['far_object_scenes']} scenes against the empty one)" + (
                      ": GroupNorm's statistics in the encoder span the whole picture, so background codes depend on "
                      "every object, and the text-to-image model has to predict that dependence before it draws "
                      "anything." if e["encoder_norm"] == "group" else
                      f": the encoder normalises each position on its own (`encoder_norm: {e['encoder_norm']}`), so a "
                      "code depends only on its receptive field; at 32×32 that field spans most of the picture, so "
                      "far objects still reach some codes through the convolutions.") +
                  " The quantizer and the encoder compared: next section.", ""]
    q = load("shapes_tokenizers")
    if q:
        lines += ["### Tokenizers for the text-to-image model: VQ against FSQ, GroupNorm against a local encoder", "",
                  f"Command: `{q['command']}`  ", machine_line(q) + "  ", *about(q),
                  f"Data: {q['note']}. Each row is the `shapes` tokenizer preset (800 steps) with another quantizer "
                  "or encoder norm (all but `fsq888-local`, the preset, have GroupNorm in the encoder); "
                  "one run each. Cell entropy: the mean over the token cells of each cell's code entropy; most "
                  "cells show the plain background, so these bits are noise the prior must predict. Far object: of "
                  "the 9 top-left codes, how many change when a circle is drawn in the bottom-right cell. Judge: "
                  "pictures read fully right after a round trip through the tokenizer.", "",
                  "| tokenizer | codes used | bits / token | mean cell entropy | top-left cell | far object | "
                  "judge on reconstructions |", "|---|---|---|---|---|---|---|"]
        for name, t in q["tokenizers"].items():
            tl = t["top_left_cell"]
            lines.append(f"| {name} | {t['codes_used']} of {t['vocab_size']} | {t['entropy_bits']:.2f} | "
                         f"{t['mean_cell_entropy_bits']:.2f} bits | {tl['distinct_codes']} codes, "
                         f"{tl['entropy_bits']:.2f} bits | {t['far_object_changes_top_left_cells']} | "
                         f"{pct(t['judge_fully_correct_reconstructions'])} |")
        lines += ["", f"The `shapes` text-to-image preset (1000 steps) on each one's tokens, first {q['n_captions']} "
                  "test captions, the same CLIP and judge (`+mod`: with text modulation, adaLN-Zero), fully correct "
                  "(single-object captions; two objects and held out in the JSON):", "",
                  "| tokens | test bits/token | no rerank | rerank 8 | no rerank, guided | rerank 8, guided | "
                  "shape | position |", "|---|---|---|---|---|---|---|---|"]
        for name, t in q["text2img"].items():
            m = t["single"]
            lines.append(f"| {name} | {t['test_bits_per_token']:.2f} | {pct(m['no_rerank'])} | {pct(m['rerank8'])} | "
                         f"{pct(m['no_rerank_guided'])} | {pct(m['rerank8_guided'])} | "
                         f"{pct(t['per_attribute']['shape'])} | {pct(t['per_attribute']['position'])} |")
        lines.append("")
    n = load("token_noise")
    if n:
        first = next(iter(n["runs"].values()))
        lines += ["### Token noise: learning where to draw from the caption", "", f"Command: `{n['command']}`  ",
                  machine_line(n) + "  ", *about(n),
                  f"Data: {n['note']}. The `{n['preset']}` text-to-image preset on the `shapes` tokenizer's tokens, "
                  "trained with each input image token replaced by a random code at the given probability (the "
                  "targets stay the true tokens); one run each, the same CLIP and judge, sampled at scale "
                  f"{first['guidance_scale']:g} (guided) and temperature {first['temperature']:g}. Fully correct, "
                  f"single-object captions (first {n['n_captions']} test captions). Probe: the model's likelihood as "
                  "a classifier of the stated position among the 9 (test captions of one object that state it): "
                  "the cell, its row, its column (chance 11 %, 33 %, 33 %).", "",
                  "| token noise | test bits/token | no rerank | rerank 8 | no rerank, guided | rerank 8, guided | "
                  "position | probe: cell | row | column |", "|---|---|---|---|---|---|---|---|---|---|"]
        for prob, t in n["runs"].items():
            m, pr = t["single"], t["position_probe"]
            lines.append(f"| {prob} | {t['test_bits_per_token']:.2f} | {pct(m['no_rerank'])} | {pct(m['rerank8'])} | "
                         f"{pct(m['no_rerank_guided'])} | {pct(m['rerank8_guided'])} | "
                         f"{pct(t['per_attribute']['position'])} | {pct(pr['accuracy'])} | {pct(pr['row'])} | "
                         f"{pct(pr['col'])} |")
        lines.append("")
    s_ = load("text2img_sampling")
    if s_:
        kv = s_["kv_tokens_per_s"]
        lines += ["## Text-to-image sampling speed", "", f"Command: `{s_['command']}`  ", machine_line(s_) + "  ",
                  f"Dimensions of `{s_['config_source']}`: d={s_['n_embd']}, {s_['n_enc_layer']} encoder + "
                  f"{s_['n_dec_layer']} decoder layers, {s_['grid'][0]}×{s_['grid'][1]} tokens, caption "
                  f"{s_['caption_len']}, batch {s_['batch']} with super-conditioning ({s_['rows_per_step']} rows a step), "
                  "random weights.", "",
                  "| sampler | image tokens/s | vqgen KV is |", "|---|---|---|",
                  f"| vqgen, KV cache + caption K/V once | {f(kv, 0)} | 1.00× |"]
        for key, label in (("naive", "vqgen, naive recomputation"), ("hf", "HF `BartForConditionalGeneration.generate`"),
                           ("min_dalle", "min-dalle `DalleBartDecoder` loop")):
            v = s_.get(f"{key}_tokens_per_s")
            lines.append(f"| {label} | {f(v, 0)} | {f(kv / v) + '×' if v else '–'} |")
        lines += ["", f"HF: {s_['hf_guidance']}.", ""]


def clip_guided_sections(lines: list[str]) -> None:
    r = load("clip_guided")
    if r:
        c = r["clip_guided"]
        lines += ["## VQGAN + CLIP: CLIP-guided optimisation against the text-to-image model", "",
                  f"Command: `{r['command']}`  ", machine_line(r) + "  ", *about(r),
                  f"Data: {r['note']}; the first {r['n_captions']} test captions, the same for every method, judged "
                  "by the same judge as above. CLIP-guided: one picture per caption from the `shapes` tokenizer's "
                  f"latents, lr {c['lr']:g}, {c['cutouts']} cutouts (smallest crop {c['crop_min']:g}), init "
                  f"{c['init']}, {r['batch']} captions optimised together. Text to image: "
                  f"{r['text2img_candidates']} samples per caption at the run's guidance "
                  f"{r['text2img_guidance_scale']:g} and temperature {r['text2img_temperature']:g}; CLIP picks the "
                  "reranked one. Renders: the test split's own pictures of the captions. CLIP score = 100 × cosine "
                  "by the CLIP that steers and reranks. See [clip_guided.md](clip_guided.md).", "",
                  "| method | single | two | held out | CLIP score | s / image |", "|---|---|---|---|---|---|"]
        rows = [("renders", "true pictures (renders)"), ("text2img_no_rerank", "text to image, no rerank"),
                ("text2img_rerank8", f"text to image, CLIP's best of {r['text2img_candidates']}")]
        rows += [(f"clip_guided_{s}", f"CLIP-guided, {s} steps") for s in r["steps"]]
        for key, label in rows:
            m = r[key]
            secs = "–" if m["seconds_per_image"] is None else f(m["seconds_per_image"], 3)
            lines.append(f"| {label} | {pct(m['single'])} | {pct(m['two'])} | {pct(m['heldout'])} | "
                         f"{f(m['clip_score'], 1)} | {secs} |")
        lines += ["", "CLIP-guided pictures that CLIP scores above the true render of their caption, yet the judge "
                  "finds wrong: " + ", ".join(f"{pct(r[f'high_clip_wrong_{s}'])} at {s} steps" for s in r["steps"]) +
                  ".", "", "![render, text to image, CLIP-guided](images/clip_guided.png)", ""]
    w = load("clip_guided_sweep")
    if w:
        lines += ["### Choosing the CLIP-guided defaults", "", f"Command: `{w['command']}`  ", machine_line(w) + "  ",
                  f"One factor at a time around lr {w['base']['lr']:g}, {w['base']['cutouts']} cutouts, smallest crop "
                  f"{w['base']['crop_min']:g}, init {w['base']['init']}; the first {w['sweep_captions']} test "
                  "captions, fully correct by the judge.", "",
                  "| lr | cutouts | smallest crop | init | steps | single | two | held out | CLIP score | s / image |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for x in w["rows"]:
            lines.append(f"| {x['lr']:g} | {x['cutouts']} | {x['crop_min']:g} | {x['init']} | {x['steps']} | "
                         f"{pct(x['single'])} | {pct(x['two'])} | {pct(x['heldout'])} | {f(x['clip_score'], 1)} | "
                         f"{f(x['seconds_per_image'], 3)} |")
        lines.append("")


def faults_section(lines: list[str]) -> None:
    r = load("faults")
    if not r:
        return
    lines += ["## Faults and bad files", "", f"Command: `{r['command']}`  ", machine_line(r) + "  ",
              f"{r['scenarios']} scenarios on tiny runs of every training stage (tokenizer, prior, text2img, CLIP, shapes "
              f"judge, classifier) in {f(r['seconds'], 0)} s: processes killed (SIGKILL) or signalled (SIGTERM, SIGINT) at "
              "random steps, checkpoint and model writes that fail half-way (disk full) or die in the middle, a second "
              "process into a run being trained, runs continued with a larger `--max-steps`, and files of every kind "
              "truncated, emptied, deleted, replaced by garbage or bit-flipped before a command reads them. "
              "Clear = exit 2 with one `vqgen: error:` line; exact = the resumed run ends with the same model bytes as "
              "one never interrupted (or the command gives what it gives on the intact file); lost = a run or command "
              "silently ends differently.", "",
              f"**{r['clear_or_exact']} of {r['scenarios']} ended in a clear error or an exact resume; {r['lost']} lost "
              f"data, {r['tracebacks']} printed a traceback.**", "",
              "| scenario | tried | clear error | exact | lost | traceback |", "|---|---|---|---|---|---|"]
    for name, c in r["by_category"].items():
        lines.append(f"| {name} | {c['scenarios']} | {c['clear']} | {c['exact']} | {c['lost']} | {c['traceback']} |")
    lines.append("")
    late = [f"{r[k]} {what}" for k, what in (("signals_after_the_loop", "reached a run after its last step (its final "
                                               "evaluation or export: it stopped at once, with one line)"),
                                              ("signals_after_the_end", "reached a run that had just finished"))
            if r.get(k)]
    if late:
        lines += ["Of the signals, " + "; ".join(late) + ".", ""]


def quantizer_section(lines: list[str]) -> None:
    runs = [r for r in (load("quantizers_h200"), load("quantizers"), load("quantizers_full")) if r]
    if runs:
        lines += ["## Stage 1: vqgen's quantizer against vector-quantize-pytorch, same preset", ""]
    for r in runs:
        quantizer_table(lines, r)
    t = load("quantizer_timing")
    if t:
        lines += [f"The quantizer's training step alone ({t['batch']}, forward + backward, best of interleaved repeats; "
                  f"`{t['command']}`, {t['machine']['torch_threads']} torch thread(s)): vqgen {f(t['vqgen_ms'])} ms, "
                  f"vector-quantize-pytorch {f(t['vqp_ms'])} ms.", ""]


def quantizer_table(lines: list[str], r: dict) -> None:
    lines += [f"Command: `{r['command']}`  ", machine_line(r) + "  ", f"Data: `{r['data']}` — {r['note']}.", "",
              *about(r),
              f"The `{r['preset']}` preset trained {r['steps']} steps per run with only the quantizer swapped "
              f"(vector-quantize-pytorch {r['vqp_version']}'s `VectorQuantize`, settings mapped from the preset, its "
              "dead-code threshold 2); "
              + ("one process per seed and side, all at once on one GPU (bf16 autocast for the autoencoder, the "
                 "quantizers in fp32), merged from `benchmarks/results/quantizers_h200/`, whose files say how each "
                 "side ran. " if "merged" in r else "seeds interleaved so timings compare. ")
              + f"Test metrics on {r['n_test_images']} test images; mean ± standard deviation over seeds.", "",
              "| quantizer | seeds | PSNR dB | SSIM | usage | perplexity | s / step |", "|---|---|---|---|---|---|---|"]
    for k, name in (("vqgen", "vqgen `VectorQuantizer`"), ("vqgen-26298a0", "vqgen as of commit 26298a0"),
                    ("vqp", "vector-quantize-pytorch `VectorQuantize`")):
        if k in r:
            m = r[k]
            lines.append(f"| {name} | {m['n_seeds']} | {f(m['psnr_mean'])} ± {f(m['psnr_std'])} | {f(m['ssim_mean'], 3)} "
                         f"± {f(m['ssim_std'], 3)} | {f(100 * m['usage_mean'], 1)} % | {f(m['perplexity_mean'], 1)} "
                         f"| {f(m['seconds_per_step'], 3)} |")
    order = sorted(((row["seed"], k, row["seconds_per_step"]) for k in ("vqgen", "vqp") if k in r for row in r[k]["runs"]),
                   key=lambda t: (t[0], (t[1] == "vqp") != (t[0] % 2 == 1)))
    if len(order) > 2 and "merged" not in r:
        lines += ["", "Seconds per step of each run, in the order they ran (the machine's load varied): "
                  + ", ".join(f"{k} seed {s} {f(v, 2)}" for s, k, v in order) + "."]
    lines.append("")


def data_section(lines: list[str]) -> None:
    r = load("data")
    if not r:
        return
    lines += ["## Data: encoding a folder lazily", "", f"Command: `{r['command']}`  ", machine_line(r), "",
              f"Peak RSS (whole process tree) while `vqgen encode` reads a 64 px folder: "
              f"{f(r['peak_rss_mib_10k'], 0)} MiB at 10 000 images, {f(r['peak_rss_mib_100k'], 0)} MiB at 100 000 images. "
              "Images per second by DataLoader workers: "
              + ", ".join(f"{k} workers {f(v, 0)}" for k, v in r["images_per_s"].items()) + ".", ""]


def vqgan_sections(lines: list[str]) -> None:
    r = load("vqgan")
    if not r:
        return
    lines += ["## Stage 1 at f = 8: does the GAN earn its place? (issue 9)", "",
              f"Command: `{r['command']}`  ", machine_line(r) + "  ", f"Data: `{r['data']}` — {r['note']}.", "",
              *about(r),
              "| tokenizer | tokens | PSNR dB | SSIM | usage | judge FD of reconstructions | sharpness | train s |",
              "|---|---|---|---|---|---|---|---|"]
    for k in ("f4", "f8_nogan", "f8_gan"):
        m, d = r[k], r["details"][k]
        lines.append(f"| `{d['preset']}` | {d['tokens']} | {f(m['psnr'])} | {f(m['ssim'], 3)} | "
                     f"{f(100 * m['codebook_usage'], 1)} % | {f(m['fd_reconstructions'], 3)} | {f(m['sharpness'])} | "
                     f"{f(m['train_seconds'], 0)} |")
    lines += ["", "| prior | judge accuracy | judge FD | samples/s | bits per image |", "|---|---|---|---|---|"]
    for k, name in (("prior_f4", "on f4 tokens"), ("prior_f8_gan", "on f8 GAN tokens")):
        m = r[k]
        lines.append(f"| {name} | {pct(m['judge_accuracy'])} | {f(m['fd'], 3)} | {f(m['samples_per_s'], 1)} | "
                     f"{f(m['bits_per_image'], 1)} |")
    lines.append("")
    for name in ("vqgan_sweep", "vqgan_sweep_cpu"):
        s_ = load(name)
        if not s_:
            continue
        lines += [f"GAN settings (`{s_['command']}`; {machine_line(s_)[len('Machine: '):-1]}), each an f8 preset "
                  "with one change." + (f" {s_['about']}." if s_.get("about") else ""), "", "| setting | PSNR dB | SSIM | judge FD | sharpness |",
                  "|---|---|---|---|---|"]
        for key, m in s_["settings"].items():
            lines.append(f"| {key}: `{m.get('preset', s_.get('preset'))}` `{' '.join(m['overrides'])}` | {f(m['psnr'])} | "
                         f"{f(m['ssim'], 3)} | {f(m['fd_reconstructions'], 3)} | {f(m['sharpness'])} |")
        lines.append("")
    w = load("vqgan_why")
    if w:
        lines += [f"What the judge FD measures at f8 (`{w['command']}`, {w['n_test']} test images; "
                  f"judge accuracy on the originals {pct(w['judge_accuracy_originals'])}):", "",
                  "| tokenizer | judge accuracy | judge FD | mean term | covariance term | sharpness | "
                  "FD of originals blurred to that sharpness |", "|---|---|---|---|---|---|---|"]
        for k, m in w["tokenizers"].items():
            lines.append(f"| {k} | {pct(m['judge_accuracy'])} | {f(m['fd'], 3)} | {f(m['fd_mean_term'], 3)} | "
                         f"{f(m['fd_covariance_term'], 3)} | {f(m['sharpness'])} | {f(m['blur_fd'], 3)} |")
        lines.append("")
        ft = w.get("decoder_finetune")
        if ft:
            lines += [f"The decoder alone trained {ft['steps']} more steps from `{Path(ft['from']).name}` (encoder and "
                      "codebook frozen, so the same tokens), on its L2 loss or with the GAN added:", "",
                      "| decoder fine-tune | seed | PSNR dB | judge accuracy | judge FD | mean term | covariance term | "
                      "sharpness |", "|---|---|---|---|---|---|---|---|"]
            for k in ("l2", "l2_gan"):
                for m in ft[k]:
                    lines.append(f"| {k} | {m['seed']} | {f(m['psnr'])} | {pct(m['judge_accuracy'])} | {f(m['fd'], 3)} | "
                                 f"{f(m['fd_mean_term'], 3)} | {f(m['fd_covariance_term'], 3)} | {f(m['sharpness'])} |")
            lines.append("")


def gpu_section(lines: list[str]) -> None:
    r = load("gpu")
    if not r:
        return
    lines += ["## Full-size presets on one GPU", "", "Command: `python benchmarks/gpu.py --json`  ",
              machine_line(r) + "  ", f"{r['precision']}; {r['warmup_steps']} warm-up and {r['timed_steps']} timed "
              "steps on random data.", "",
              "| preset | parameters | batch | throughput | TFLOP/s | of bf16 peak | peak memory | estimate |",
              "|---|---|---|---|---|---|---|---|"]
    for m in r["results"]:
        speed = f"{f(m['images_per_s'], 1)} images/s" if "images_per_s" in m else f"{f(m['tokens_per_s'] / 1e3, 0)} k tokens/s"
        lines.append(f"| `{m['preset']}` | {f(m['params_m'], 1)} M | {m['batch']} | {speed} | {f(m['achieved_tflops'], 0)} | "
                     f"{pct(m['fraction_of_peak'])} | {f(m['peak_memory_gib'], 1)} GiB | {f(m['estimated_memory_gib'], 1)} GiB |")
    lines.append("")


def main() -> None:
    lines = ["# Benchmarks", "",
             "Rendered by `python benchmarks/report.py` from `benchmarks/results/*.json`; each section names the command "
             "that produced it. Fashion-MNIST here is the re-split copy in `../shared/data/fashion-mnist` (60 000 train / "
             "10 000 test, **not the official test split**), so numbers are not comparable with published ones. "
             "Timings are from a shared 2-core CPU and are noisy; compare ratios within one run.", ""]
    for section in (text2img_sections, clip_guided_sections, tokenizer_section, quantizer_section, vqgan_sections,
                    folder_section, data_section, throughput_section, prior_sections,
                    sampling_section, gpu_section, faults_section):
        section(lines)
    out = REPO / "docs" / "benchmarks.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
