"""``python -m milkguard`` runs the ``milkguard`` command."""

import sys

from milkguard.cli import main

sys.exit(main())
