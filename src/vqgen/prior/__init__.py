"""Stage-2 prior: a GPT over codebook (or palette) tokens, its samplers and presets."""
from .gpt import GPTPrior, PriorConfig
from .pixels import fit_palette, from_indices, load_palette, save_palette, to_indices
from .presets import PRESETS
from .sampling import guide, sample, sample_sliding, top_k_filter, top_p_filter

__all__ = [
    "GPTPrior", "PriorConfig", "PRESETS",
    "sample", "sample_sliding", "top_k_filter", "top_p_filter", "guide",
    "fit_palette", "to_indices", "from_indices", "save_palette", "load_palette",
]
