"""``python -m hyperprune.cli``: the command line (as ``hyperprune``)."""

import sys

from hyperprune.cli.main import main

sys.exit(main())
