"""``vqgen serve``: a web page over a loaded run (text to image, prior samples, or a tokenizer's
reconstructions). :mod:`.limits` holds the caps, :mod:`.handler` the request layer (plain Python,
tested directly), :mod:`.app` the gradio page over it (gradio, the ``serve`` extra, is imported only
when a page is built)."""
from .limits import ServeLimits

__all__ = ["ServeLimits", "serve"]


def serve(*args, **kwargs):
    """Load a run once and serve its page: see :func:`vqgen.serve.app.serve`."""
    from .app import serve as _serve
    return _serve(*args, **kwargs)
