"""MilkGuard: a live HACCP and cold-chain monitor for dairies.

This package holds what every part shares: the wire contract (:mod:`milkguard.contract`), the
exception root (:mod:`milkguard.errors`), settings, logging and the ``milkguard`` command.
It imports nothing on purpose, so that ``import milkguard.contract`` stays light on a gateway.
"""

__version__ = "0.1.0"
