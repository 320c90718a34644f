"""The gradio page over a :class:`~vqgen.serve.handler.Handler`, and ``serve()``, which ``vqgen serve``
runs: load the run once, build the page, listen (on loopback unless told otherwise).

gradio is imported here only (``pip install 'vqgen[serve]'``), with its analytics off, no share link,
no MCP server, no server-side rendering (which would need node) and no web fonts (the theme uses the
browser's own), so the page makes no request beyond the machine it is served from.
"""
from __future__ import annotations

import ipaddress
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .handler import Handler, Reply
from .limits import DEFAULT_HOST, DEFAULT_PORT, MAX_SEED, MAX_TEMPERATURE, ServeLimits

# Every event shares one concurrency group: `concurrent_jobs` bounds the page's jobs together, not
# each button apart.
CONCURRENCY_ID = "model"
CSS = "#tokens textarea { font-family: ui-monospace, monospace; }"  # the token grid's columns line up


def import_gradio():
    """gradio, with its analytics off (set before the import, which reads it)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as exc:
        raise ConfigError(f"`vqgen serve` needs gradio ({exc}): pip install 'vqgen[serve]'") from exc
    return gradio


def _theme(gr):
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])  # no Google Fonts


def _gallery(reply: Reply) -> list[tuple[Any, str]]:
    return [(im, label) for im, label in reply.images]


def build_app(handler: Handler):
    """The gradio Blocks of ``handler``'s run kind (not launched; call ``.queue()`` / ``.launch()``)."""
    gr = import_gradio()
    pipe, lim = handler.pipe, handler.limits
    title = {"text2img": "text to image", "prior": "prior samples", "tokenizer": "tokenizer"}[pipe.kind]
    with gr.Blocks(title=f"vqgen · {title}", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## vqgen · {title}\n`{pipe.path.name}` ({pipe.kind} run, {pipe.resolution}×{pipe.resolution})")
        if pipe.kind == "text2img":
            _text2img_page(gr, handler, lim)
        elif pipe.kind == "prior":
            _prior_page(gr, handler, lim)
        else:
            _tokenizer_page(gr, handler)
    demo.queue(default_concurrency_limit=lim.concurrent_jobs, max_size=lim.queue_size)
    return demo


def _seed(gr):
    return gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed")


def _outputs(gr, gallery_label: str):
    gallery = gr.Gallery(label=gallery_label, elem_id="gallery", format="png", columns=4, object_fit="contain",
                         interactive=False)
    status = gr.Textbox(label="Status", elem_id="status", interactive=False, lines=1)
    return gallery, status


def _text2img_page(gr, handler: Handler, lim: ServeLimits) -> None:
    pipe = handler.pipe
    caption = gr.Textbox(label="Caption", placeholder="a red circle in the top left", max_length=lim.max_caption_chars,
                         elem_id="caption")
    with gr.Row():
        n = gr.Slider(1, lim.max_candidates, value=min(16, lim.max_candidates), step=1, label="Candidates",
                      elem_id="candidates")
        keep = gr.Slider(1, lim.max_candidates, value=min(4, lim.max_candidates), step=1, elem_id="kept",
                         label="Kept (best by CLIP score)", visible=pipe.can_rank)
    with gr.Row():
        guidance = gr.Slider(0, handler.max_guidance, value=pipe.default_guidance, step=0.1, label="Guidance",
                             elem_id="guidance")
        temperature = gr.Slider(0.05, MAX_TEMPERATURE, value=pipe.default_temperature, step=0.05,
                                label="Temperature", elem_id="temperature")
        top_k = gr.Number(value=0, precision=0, minimum=0, maximum=pipe.run.model.config.vocab_size,
                          label="Top-k (0: off)", elem_id="top-k")
        seed = _seed(gr)
    button = gr.Button("Generate", variant="primary", elem_id="generate")
    gallery, status = _outputs(gr, "Kept images (CLIP score)" if pipe.can_rank else "Samples")

    def run(caption, n, keep, guidance, temperature, top_k, seed):
        reply = handler.text2img(caption, n, keep if pipe.can_rank else None, guidance, temperature, top_k, seed)
        return _gallery(reply), reply.status

    inputs = [caption, n, keep, guidance, temperature, top_k, seed]
    button.click(run, inputs, [gallery, status], api_name="generate", concurrency_id=CONCURRENCY_ID)
    caption.submit(run, inputs, [gallery, status], api_name=False, concurrency_id=CONCURRENCY_ID)


def _prior_page(gr, handler: Handler, lim: ServeLimits) -> None:
    pipe = handler.pipe
    conditional = pipe.conditioning == "class"
    with gr.Row():
        if conditional:
            names = pipe.class_names
            cls = gr.Dropdown(names, value=names[0], label="Class", elem_id="class")
            guidance = gr.Slider(0, handler.max_guidance, value=pipe.default_guidance, step=0.1, label="Guidance",
                                 elem_id="guidance")
        n = gr.Slider(1, lim.max_candidates, value=min(8, lim.max_candidates), step=1, label="Samples",
                      elem_id="candidates")
        seed = _seed(gr)
    button = gr.Button("Sample", variant="primary", elem_id="generate")
    gallery, status = _outputs(gr, "Samples")
    if conditional:
        def run(cls, guidance, n, seed):
            reply = handler.prior(cls, n, guidance, seed)
            return _gallery(reply), reply.status
        inputs = [cls, guidance, n, seed]
    else:
        def run(n, seed):
            reply = handler.prior(None, n, None, seed)
            return _gallery(reply), reply.status
        inputs = [n, seed]
    button.click(run, inputs, [gallery, status], api_name="sample", concurrency_id=CONCURRENCY_ID)


def _tokenizer_page(gr, handler: Handler) -> None:
    with gr.Row():
        image = gr.Image(type="pil", sources=["upload", "clipboard"], label="Picture", elem_id="picture")
        gallery = gr.Gallery(label="Input as the tokenizer sees it · reconstruction", elem_id="gallery", format="png",
                             columns=2, object_fit="contain", interactive=False)
    button = gr.Button("Reconstruct", variant="primary", elem_id="generate")
    status = gr.Textbox(label="Status", elem_id="status", interactive=False, lines=1)
    grid = gr.Textbox(label="Token grid", elem_id="tokens", interactive=False, lines=8, max_lines=64)

    def run(image):
        reply = handler.tokenizer(image)
        return _gallery(reply), reply.status, reply.tokens

    button.click(run, [image], [gallery, status, grid], api_name="reconstruct", concurrency_id=CONCURRENCY_ID)
    image.upload(run, [image], [gallery, status, grid], api_name=False, concurrency_id=CONCURRENCY_ID)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch(demo, handler: Handler, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Listen on ``host``:``port`` in the background (``demo.close()`` stops; ``demo.block_thread()`` waits)."""
    gr = import_gradio()
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=False,
                max_file_size=handler.limits.max_upload_bytes, ssr_mode=False, mcp_server=False,
                enable_monitoring=False, run_history=False, quiet=True, theme=_theme(gr), css=CSS,
                prevent_thread_lock=True)


def check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port must be from 1 to 65535, got {port!r}")
    return port


def serve(run_dir: str | Path, clip: str | Path | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          device: str = "cpu", limits: ServeLimits | None = None, block: bool = True):
    """Load ``run_dir`` (and ``clip``) once and serve its page; returns the Blocks (when not ``block``)."""
    from ..pipeline import Pipeline
    port = check_port(port)
    if not host:
        raise ConfigError("--host must name an interface, e.g. 127.0.0.1")
    import_gradio()  # fail before loading models when gradio is missing
    pipe = Pipeline.from_pretrained(run_dir, clip=clip, device=device)
    handler = Handler(pipe, limits)
    demo = build_app(handler)
    # gradio decodes an upload before the handler sees it, so PIL's decompression-bomb check is the one
    # that acts first: it refuses pictures over our pixel cap (the handler checks again).
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = handler.limits.max_upload_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    launch(demo, handler, host, port)
    if not is_loopback(host):
        print(f"vqgen: warning: serving on {host}, not loopback: anyone who can reach port {port} can use the "
              "page", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"vqgen: serving {pipe.kind} run {run_dir} at http://{shown}:{port}" + (" (Ctrl-C stops)" if block else ""),
          flush=True)
    if block:
        demo.block_thread()  # until Ctrl-C, which closes the server
    return demo
