"""``python -m escalator`` runs the CLI."""

import sys

from escalator.cli import main

sys.exit(main())
