"""``python -m hyperprune``: the command line."""

import sys

from hyperprune.cli import main

sys.exit(main())
