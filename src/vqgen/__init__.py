"""vqgen: two-stage image generation with discrete codebooks. ``vqgen.Pipeline`` turns a trained run
into pictures (imported on first use, so ``import vqgen`` stays light)."""
__version__ = '0.1.0'
__all__ = ["Generation", "Pipeline"]


def __getattr__(name: str):
    if name in __all__:
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'vqgen' has no attribute {name!r}")
