"""``python -m vqgen.cli ...`` (the form ``torchrun -m vqgen.cli`` needs)."""
import sys

from . import main

sys.exit(main())
