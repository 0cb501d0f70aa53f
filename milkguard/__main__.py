"""``python -m milkguard`` runs the ``milkguard`` command (a launcher: nothing imports it)."""

import sys

from milkguard_cli import main

sys.exit(main())
