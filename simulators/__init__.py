"""Simulators: farm, truck and plant devices that publish like real gateways."""
