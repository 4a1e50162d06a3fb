"""``python -m pruneframe``: the command line, e.g. under ``torchrun --nproc-per-node 2 -m pruneframe prune ...``."""

import sys

from pruneframe.cli import main

sys.exit(main())
