"""MilkGuard: a live HACCP and cold-chain monitor for dairies.

This package holds what every part shares: the wire contract (:mod:`milkguard.contract`), the
exception root (:mod:`milkguard.errors`), the settings every application shares, logging and MQTT.
The ``milkguard`` command lives in :mod:`milkguard_cli`, above every application.
It imports nothing on purpose, so that ``import milkguard.contract`` stays light on a gateway.
"""

__version__ = "0.1.0"
