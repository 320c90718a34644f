"""`vqgen serve`: the request handler called directly on tiny runs (valid requests, every bad value
answered with a message, the caps, nothing a request sends opened as a file), the gradio page and the
command's options without a server, and one end-to-end test that starts `vqgen serve` on a free
loopback port and drives the page in headless Chromium.

The end-to-end test needs Debian's `chromium` and the Python `playwright` driver (never its bundled
browsers: `playwright install` downloads, and nothing is downloaded here). Without them it is skipped
with the reason, unless VQGEN_REQUIRE_BROWSER is set: `make test` (so CI) sets it and installs
chromium first, so there a missing browser is a failure, not a quiet skip. VQGEN_CHROMIUM names another
Chromium binary.
"""
from __future__ import annotations

import importlib.util
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vqgen
from tiny_runs import make_runs
from vqgen.cli import build_parser, main
from vqgen.config import apply_overrides
from vqgen.errors import ConfigError
from vqgen.serve import ServeLimits
from vqgen.serve.handler import Handler, token_grid_text
from vqgen.serve.limits import DEFAULT_HOST, MAX_CANDIDATES, MAX_CAPTION_CHARS, MAX_SEED
from vqgen.train.prior import PRIOR_PRESETS, train_prior

CAPTION = "a red circle"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = make_runs(tmp_path_factory.mktemp("serve"))
    unconditional = ["model.vocab_size=32", "model.num_classes=0", "model.cond_drop_prob=0", "loop.max_steps=1"]
    cfg = apply_overrides(PRIOR_PRESETS["tiny"](), unconditional)
    train_prior(cfg, runs / "uncond", tokens=str(runs / "tokens"), progress=False)
    return runs


@pytest.fixture(scope="module")
def t2i(runs):
    return vqgen.Pipeline.from_pretrained(runs / "demo" / "text2img", clip=runs / "demo" / "clip")


@pytest.fixture(scope="module")
def page(t2i):
    return Handler(t2i)


@pytest.fixture(scope="module")
def prior(runs):
    return Handler(vqgen.Pipeline.from_pretrained(runs / "prior"))


@pytest.fixture(scope="module")
def tok(runs):
    return Handler(vqgen.Pipeline.from_pretrained(runs / "tok"))


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(im) for im in images]


def _shrunk(reply, size: int) -> list[np.ndarray]:
    """The reply's (enlarged) pictures back at the model's size."""
    return [np.asarray(im.resize((size, size), Image.NEAREST)) for im, _ in reply.images]


def _refused(reply) -> str:
    assert not reply.ok and reply.images == [] and reply.tokens == ""
    assert reply.status and "\n" not in reply.status and len(reply.status) < 300 and "Traceback" not in reply.status
    return reply.status


# --- text to image --------------------------------------------------------------------------------------------

def test_a_caption_gives_the_kept_images_their_clip_scores_and_the_time(page, t2i):
    r = page.text2img(CAPTION, n=6, keep=3, seed=0)
    assert r.ok and len(r.images) == 3 and r.seconds is not None and r.seconds > 0
    assert all(im.size == (256, 256) for im, _ in r.images)  # 16×16 pictures shown 16× larger, pixels crisp
    direct = t2i(CAPTION, n=6, keep=3, seed=0)  # the same as the library, best CLIP score first
    assert [label for _, label in r.images] == [f"CLIP {s:.2f}" for s in direct.scores]
    assert all(np.array_equal(a, b) for a, b in zip(_shrunk(r, 16), _pixels(direct.images)))
    assert r.status.startswith(f"best 3 of 6 by CLIP score for {CAPTION!r} · guidance 2 · temperature 1 · top-k off")
    assert r.status.endswith(f"· seed 0 · {r.seconds:.2f} s")


def test_every_option_reaches_the_pipeline_and_widget_floats_count_as_numbers(page, t2i):
    r = page.text2img(CAPTION, n=5.0, keep=2.0, guidance=0.0, temperature=0.5, top_k=3.0, seed=7.0)
    direct = t2i(CAPTION, n=5, keep=2, guidance=0.0, temperature=0.5, top_k=3, seed=7)
    assert r.ok and all(np.array_equal(a, b) for a, b in zip(_shrunk(r, 16), _pixels(direct.images)))
    assert "guidance 0 · temperature 0.5 · top-k 3 · seed 7" in r.status
    other = page.text2img(CAPTION, n=5, keep=2, guidance=0.0, temperature=0.5, top_k=3, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(_shrunk(other, 16), _shrunk(r, 16)))
    assert page.text2img(CAPTION, n=2, keep=None, top_k=0).status.startswith("best 2 of 2")  # keep None: all


def test_without_a_clip_every_candidate_is_kept_unranked(runs):
    r = Handler(vqgen.Pipeline.from_pretrained(runs / "demo" / "text2img")).text2img(CAPTION, n=3, keep=1)
    assert r.ok and [label for _, label in r.images] == ["candidate 1", "candidate 2", "candidate 3"]
    assert r.status.startswith("3 samples (no CLIP loaded: not ranked)")


@pytest.mark.parametrize("kwargs, says", [
    (dict(caption=None), "the caption must be text, got NoneType"),
    (dict(caption=["a red circle"]), "the caption must be text, got list"),
    (dict(caption="   "), "the caption is empty"),
    (dict(caption="x" * (MAX_CAPTION_CHARS + 1)), f"the caption has {MAX_CAPTION_CHARS + 1} characters; the limit"),
    (dict(n=0), f"candidates must be a whole number from 1 to {MAX_CANDIDATES}, got 0"),
    (dict(n=MAX_CANDIDATES + 1), f"candidates must be a whole number from 1 to {MAX_CANDIDATES}"),
    (dict(n=2.5), "candidates must be a whole number"),
    (dict(n="8"), "candidates must be a whole number from 1 to 64, got '8'"),
    (dict(n=True), "candidates must be a whole number"),
    (dict(n=math.nan), "candidates must be a whole number"),
    (dict(n=None), "candidates must be a whole number"),
    (dict(n=4, keep=5), "kept must be a whole number from 1 to 4, got 5"),
    (dict(keep=0), "kept must be a whole number from 1 to 8"),
    (dict(guidance=-1), "guidance must be a number from 0 to 20, got -1"),
    (dict(guidance=math.inf), "guidance must be a number from 0 to 20, got inf"),
    (dict(guidance=21), "guidance must be a number from 0 to 20"),
    (dict(guidance="2"), "guidance must be a number"),
    (dict(temperature=0), "temperature must be a number above 0 and at most 5, got 0"),
    (dict(temperature=-0.5), "temperature must be a number above 0"),
    (dict(temperature=6), "temperature must be a number above 0 and at most 5"),
    (dict(top_k=-1), "top-k must be a whole number from 0 to"),
    (dict(top_k=10**9), "top-k must be a whole number from 0 to"),
    (dict(top_k=1.5), "top-k must be a whole number"),
    (dict(seed=-1), f"seed must be a whole number from 0 to {MAX_SEED}, got -1"),
    (dict(seed=MAX_SEED + 1), "seed must be a whole number"),
    (dict(seed=None), "seed must be a whole number"),
    (dict(seed="1" * 500), "seed must be a whole number from 0 to 4294967295, got '1111"),  # echoed short
])
def test_each_bad_value_gives_a_message_and_no_exception(page, kwargs, says):
    args = dict(caption=CAPTION, n=8, keep=None, guidance=None, temperature=None, top_k=0, seed=0) | kwargs
    assert says in _refused(page.text2img(**args))


def test_the_caps_are_the_limits_given(t2i):
    small = Handler(t2i, ServeLimits(max_candidates=3, max_caption_chars=12))
    assert "candidates must be a whole number from 1 to 3, got 4" in _refused(small.text2img(CAPTION, n=4))
    assert "the caption has 13 characters; the limit is 12" in _refused(small.text2img("a red circle!", n=1))
    assert small.text2img(CAPTION, n=3, keep=1).ok  # 12 characters, 3 candidates: at the caps
    for bad in (dict(max_candidates=0), dict(max_caption_chars=-1), dict(concurrent_jobs=1.5), dict(queue_size=True)):
        with pytest.raises(ConfigError, match="must be a positive integer"):
            ServeLimits(**bad)


def test_guidance_above_the_page_cap_is_allowed_up_to_the_runs_own_default(t2i, monkeypatch):
    assert "guidance must be a number from 0 to 20, got 24" in _refused(Handler(t2i).text2img(CAPTION, guidance=24))
    monkeypatch.setattr(t2i.run.model.config, "guidance_scale", 25.0)
    assert Handler(t2i).max_guidance == 25.0 and Handler(t2i).text2img(CAPTION, n=1, guidance=24).ok


def test_a_caption_longer_than_the_model_reads_is_used_and_the_page_says_so(page, t2i):
    words = " ".join(["a small red circle in the top left"] * 6)
    with pytest.warns(UserWarning, match="truncated"):  # the server's log says so too
        r = page.text2img(words, n=1)
    max_len = t2i.run.model.config.max_text_len
    assert r.ok and f"the caption is longer than the model reads ({max_len - 2} tokens)" in r.status
    assert "longer than the model reads" not in page.text2img(CAPTION, n=1).status


def test_a_failure_that_is_no_bad_value_is_logged_with_its_traceback_not_shown(page, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory at /secret/path")
    monkeypatch.setattr(page, "pipe", type("Broken", (), {
        "kind": "text2img", "can_rank": True, "default_guidance": 2.0, "default_temperature": 1.0,
        "run": page.pipe.run, "__call__": broken})())
    status = _refused(page.text2img(CAPTION, n=2))
    assert status == "the request failed on the server (the server log has the details)"
    assert "/secret/path" in caplog.text and "Traceback" in caplog.text


def test_a_page_serves_only_its_run_kind(page, prior, tok):
    assert "this page serves a text2img run, not a prior one" in _refused(page.prior("Sneaker"))
    assert "this page serves a text2img run, not a tokenizer one" in _refused(page.tokenizer(Image.new("L", (8, 8))))
    assert "this page serves a prior run, not a text2img one" in _refused(prior.text2img(CAPTION))
    assert "this page serves a tokenizer run, not a prior one" in _refused(tok.prior())


# --- prior ------------------------------------------------------------------------------------------------------

def test_the_class_picker_samples_the_picked_class_at_the_guidance_given(prior):
    pipe = prior.pipe
    r = prior.prior("Sneaker", n=3, guidance=1.5, seed=4)
    direct = pipe(class_label=7, n=3, guidance=1.5, seed=4)  # "Sneaker" is class 7
    assert r.ok and [label for _, label in r.images] == ["sample 1", "sample 2", "sample 3"]
    assert all(np.array_equal(a, b) for a, b in zip(_shrunk(r, 16), _pixels(direct.images)))
    assert r.status.startswith("3 samples of 'Sneaker' · guidance 1.5 · seed 4 · ")
    by_id = prior.prior(7.0, n=3, guidance=1.5, seed=4)  # an id (a number widget's float) works too
    assert by_id.ok and all(np.array_equal(a, b) for a, b in zip(_shrunk(by_id, 16), _shrunk(r, 16)))
    one = prior.prior("Sneaker", n=1)  # guidance: the run's default
    assert one.status.startswith(f"1 sample of 'Sneaker' · guidance {pipe.default_guidance:g}")


@pytest.mark.parametrize("kwargs, says", [
    (dict(class_name="Spaceship"), "pick a class from the list (10 classes), got 'Spaceship'"),
    (dict(class_name=None), "pick a class from the list"),
    (dict(class_name="../../etc/passwd"), "pick a class from the list"),
    (dict(class_name=10), "class must be a whole number from 0 to 9, got 10"),
    (dict(class_name=["Sneaker"]), "pick a class from the list"),
    (dict(guidance=-2), "guidance must be a number from 0 to 20"),
    (dict(n=MAX_CANDIDATES + 1), f"samples must be a whole number from 1 to {MAX_CANDIDATES}"),
    (dict(seed=1.5), "seed must be a whole number"),
])
def test_bad_prior_values_give_a_message(prior, kwargs, says):
    args = dict(class_name="Sneaker", n=2, guidance=None, seed=0) | kwargs
    assert says in _refused(prior.prior(**args))


def test_an_unconditional_prior_takes_no_class_and_no_guidance(runs):
    h = Handler(vqgen.Pipeline.from_pretrained(runs / "uncond"))
    r = h.prior(None, n=2, seed=1)
    assert r.ok and len(r.images) == 2 and r.status.startswith("2 unconditional samples · seed 1")
    assert "takes no class and no guidance" in _refused(h.prior("Sneaker", n=2))
    assert "takes no class and no guidance" in _refused(h.prior(None, n=2, guidance=2))


# --- tokenizer ----------------------------------------------------------------------------------------------------

def test_an_upload_gives_its_reconstruction_and_token_grid(tok):
    pipe = tok.pipe
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))  # RGB 40×30
    r = tok.tokenizer(picture)
    assert r.ok and [label for _, label in r.images] == ["input as the tokenizer sees it", "reconstruction"]
    seen, recon = _shrunk(r, 16)
    direct = pipe.reconstruct(picture)
    assert np.array_equal(seen, np.asarray(direct.source)) and np.array_equal(recon, np.asarray(direct.images[0]))
    from vqgen.images import load_picture
    tokens = pipe.run.encode(load_picture(picture, 16, 1)[None])[0]
    h, w = tokens.shape
    assert r.tokens == token_grid_text(tokens) and len(r.tokens.splitlines()) == h
    assert [[int(t) for t in line.split()] for line in r.tokens.splitlines()] == tokens.tolist()
    assert r.status.startswith(f"{h}×{w} tokens of a {pipe.run.codebook_size}-entry codebook for a 16×16 picture "
                               "(uploaded 40×30)")
    as_array = tok.tokenizer(np.asarray(picture))  # gradio's numpy input type works too
    assert as_array.ok and as_array.tokens == r.tokens


def test_token_grid_text_is_aligned():
    assert token_grid_text(torch.tensor([[1, 22], [333, 4]])) == "  1  22\n333   4"


def test_a_path_is_never_opened_and_bad_uploads_give_a_message(tok, tmp_path):
    real = tmp_path / "picture.png"
    Image.new("L", (16, 16), 128).save(real)  # a readable image: refused all the same, as a name
    for path in (str(real), real, "/etc/passwd"):
        assert "the picture must be an uploaded image, got" in _refused(tok.tokenizer(path))
    assert _refused(tok.tokenizer(None)) == "upload a picture first"
    assert "must be uint8" in _refused(tok.tokenizer(np.zeros((8, 8), np.float32)))
    assert _refused(tok.tokenizer(np.zeros((0, 8), np.uint8))) == "the picture is empty"
    small = Handler(tok.pipe, ServeLimits(max_upload_pixels=100))
    assert "the picture has 121 pixels; the limit is 100" in _refused(small.tokenizer(Image.new("L", (11, 11))))
    assert small.tokenizer(Image.new("L", (10, 10))).ok


# --- the page and the command, without a server -------------------------------------------------------------------

def _elem_ids(demo) -> set[str]:
    return {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def test_each_run_kind_gets_its_page_with_the_queue_caps(page, prior, tok, runs):
    from vqgen.serve.app import CONCURRENCY_ID, build_app
    demo = build_app(Handler(page.pipe, ServeLimits(concurrent_jobs=2, queue_size=5)))
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert {"caption", "candidates", "kept", "guidance", "temperature", "top-k", "seed", "generate", "gallery",
            "status"} <= _elem_ids(demo)
    assert demo._queue.max_size == 5 and demo._queue.default_concurrency_limit == 2
    assert {fn.concurrency_id for fn in demo.fns.values()} == {CONCURRENCY_ID}  # one cap for the whole page
    assert {"class", "guidance", "candidates", "seed", "gallery", "status"} <= _elem_ids(build_app(prior))
    uncond = _elem_ids(build_app(Handler(vqgen.Pipeline.from_pretrained(runs / "uncond"))))
    assert "class" not in uncond and "guidance" not in uncond and "candidates" in uncond
    assert {"picture", "gallery", "status", "tokens"} <= _elem_ids(build_app(tok))


def test_launch_binds_loopback_and_shares_nothing(page, monkeypatch):
    from vqgen.serve import app
    demo = app.build_app(page)
    seen = {}
    monkeypatch.setattr(type(demo), "launch", lambda self, **kw: seen.update(kw))
    app.launch(demo, page)
    assert seen["server_name"] == DEFAULT_HOST == "127.0.0.1" and seen["server_port"] == 7860
    assert seen["share"] is False and seen["ssr_mode"] is False and seen["mcp_server"] is False
    assert seen["max_file_size"] == page.limits.max_upload_bytes and seen["prevent_thread_lock"] is True
    assert app.is_loopback("127.0.0.1") and app.is_loopback("::1") and app.is_loopback("localhost")
    assert not app.is_loopback("0.0.0.0") and not app.is_loopback("example.org")


@pytest.fixture
def launched(monkeypatch):
    """`vqgen serve` up to the point of listening: what it would launch, instead of launching it."""
    from vqgen.serve import app
    seen = {}

    def fake(demo, handler, host, port):
        seen.update(demo=demo, handler=handler, host=host, port=port)
    monkeypatch.setattr(app, "launch", fake)
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # serve() lowers it to the upload cap
    import gradio
    monkeypatch.setattr(gradio.Blocks, "block_thread", lambda self: seen.setdefault("blocked", True))
    return seen


def test_the_command_loads_the_run_once_and_passes_every_option(runs, launched, capsys):
    args = ["serve", str(runs / "demo" / "text2img"), "--clip", str(runs / "demo" / "clip"), "--host", "0.0.0.0",
            "--port", "8123", "--device", "cpu", "--max-candidates", "5", "--max-caption-chars", "50",
            "--concurrent-jobs", "2", "--queue-size", "3"]
    assert main(args) == 0
    h = launched["handler"]
    assert h.kind == "text2img" and h.pipe.can_rank and str(h.pipe.device) == "cpu"
    assert h.limits == ServeLimits(max_candidates=5, max_caption_chars=50, concurrent_jobs=2, queue_size=3)
    assert launched["host"] == "0.0.0.0" and launched["port"] == 8123 and launched["blocked"]
    assert launched["demo"]._queue.max_size == 3
    from PIL import Image
    assert Image.MAX_IMAGE_PIXELS == h.limits.max_upload_pixels  # PIL refuses bigger uploads while decoding
    out, err = capsys.readouterr()
    assert f"serving text2img run {runs / 'demo' / 'text2img'} at http://0.0.0.0:8123 (Ctrl-C stops)" in out
    assert err.strip() == ("vqgen: warning: serving on 0.0.0.0, not loopback: anyone who can reach port 8123 can use "
                           "the page")
    assert main(["serve", str(runs / "tok"), "--port", "8124"]) == 0
    assert launched["host"] == "127.0.0.1" and launched["handler"].kind == "tokenizer"
    assert capsys.readouterr().err == ""  # loopback: no warning
    defaults = build_parser().parse_args(["serve", "RUN"])
    assert (defaults.host, defaults.port, defaults.clip, defaults.device) == ("127.0.0.1", 7860, None, "cpu")
    assert (defaults.max_candidates, defaults.max_caption_chars) == (MAX_CANDIDATES, MAX_CAPTION_CHARS)


@pytest.mark.parametrize("extra, says", [
    (["--port", "0"], "--port must be from 1 to 65535, got 0"),
    (["--port", "70000"], "--port must be from 1 to 65535"),
    (["--max-candidates", "0"], "max_candidates must be a positive integer, got 0"),
    (["--max-caption-chars", "-3"], "max_caption_chars must be a positive integer"),
    (["--concurrent-jobs", "0"], "concurrent_jobs must be a positive integer"),
    (["--queue-size", "0"], "queue_size must be a positive integer"),
    (["--device", "nonsense"], "unknown device 'nonsense'"),
    (["--host", ""], "--host must name an interface"),
    (["--clip", "CLIP"], "clip= ranks the candidates of a caption; "),
])
def test_bad_options_are_one_line_and_exit_2_without_serving(runs, launched, capsys, extra, says):
    extra = [str(runs / "demo" / "clip") if a == "CLIP" else a for a in extra]
    assert main(["serve", str(runs / "prior"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqgen: error: ") and says in err and err.count("\n") == 1 and not launched


def test_a_missing_or_wrong_run_directory_and_missing_gradio_exit_2(runs, launched, capsys, monkeypatch, tmp_path):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("vqgen: error: ")
    assert main(["serve", str(runs / "tokens")]) == 2
    assert capsys.readouterr().err.startswith("vqgen: error: ")
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the serve extra were not installed
    assert main(["serve", str(runs / "tok")]) == 2
    assert "pip install 'vqgen[serve]'" in capsys.readouterr().err and not launched


def test_importing_vqgen_and_its_command_leaves_gradio_out():
    code = "import sys, vqgen, vqgen.cli, vqgen.serve; sys.exit('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# --- end to end: the command, a browser, a caption, a picture -----------------------------------------------------

# --no-sandbox: tests run as root in CI; the rest keep chromium off the (closed) network.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser() -> str:
    """Chromium's path, or skip (fail under VQGEN_REQUIRE_BROWSER, as `make test` runs) saying what is missing."""
    path = os.environ.get("VQGEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    path = path if path and os.access(path, os.X_OK) else None
    missing = None
    if importlib.util.find_spec("playwright") is None:
        missing = "the Python playwright package (pip install -e '.[dev]')"
    if path is None:
        missing = "Debian's chromium (apt-get install chromium; `make test` installs it as root)"
    if missing:
        if os.environ.get("VQGEN_REQUIRE_BROWSER"):
            pytest.fail(f"the end-to-end page test needs {missing}")
        pytest.skip(f"the end-to-end page test needs {missing}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            pytest.fail(f"vqgen serve exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"vqgen serve did not answer at {url} within {timeout} s:\n{log.read_text()}")


@pytest.mark.slow
@pytest.mark.e2e
def test_the_page_in_a_browser_turns_a_caption_into_pictures(runs, tmp_path):
    chromium = _browser()
    from playwright.sync_api import sync_playwright
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    env.pop("http_proxy", None), env.pop("HTTP_PROXY", None)  # the page is on loopback
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "vqgen.cli", "serve", str(runs / "demo" / "text2img"),
                                   "--clip", str(runs / "demo" / "clip"), "--port", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_up(url, server, log)
        with sync_playwright() as pw:
            # playwright gives each launch a fresh profile (its own temporary --user-data-dir)
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                outside = []  # the page fetches nothing beyond the server (no fonts, no analytics)
                page.on("request", lambda r: r.url.startswith((url, "data:")) or outside.append(r.url))
                page.goto(url, timeout=60_000)
                status = page.locator("#status textarea")
                page.locator("#generate").click()  # no caption yet: the page says so
                page.wait_for_function("() => document.querySelector('#status textarea').value !== ''",
                                       timeout=60_000)
                assert status.input_value().startswith("the caption is empty")
                page.locator("#caption textarea").fill(CAPTION)
                page.locator("#generate").click()
                page.locator("#gallery img").first.wait_for(timeout=60_000)
                page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('best')",
                                       timeout=60_000)
                images = page.locator("#gallery img")
                assert images.count() == 4  # the page's default: the best 4 of 16 by CLIP score
                assert images.first.evaluate("img => img.complete && img.naturalWidth") == 256
                assert status.input_value().startswith(f"best 4 of 16 by CLIP score for {CAPTION!r}")
                assert status.input_value().endswith(" s") and "CLIP " in page.locator("#gallery").inner_text()
                assert outside == []
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "Traceback" not in log.read_text()
