"""``python -m milkguard_cli`` runs the ``milkguard`` command."""

import sys

from milkguard_cli import main

sys.exit(main())
