"""``python -m escalator`` runs the CLI."""

import sys

from escalator.cli.main import main

sys.exit(main())
