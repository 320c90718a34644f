"""Text side of text-to-image: caption normalisation, BPE, the caption encoder and image-token decoder."""
