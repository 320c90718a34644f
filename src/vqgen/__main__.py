"""``python -m vqgen ...``: the ``vqgen`` command, and the form ``torchrun -m vqgen`` launches.

    torchrun --standalone --nproc_per_node=2 -m vqgen train tokenizer --config tiny --out RUN
"""
import sys

from .cli import main

sys.exit(main())
