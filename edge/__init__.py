"""Edge: what runs on gateway hardware at farms, on trucks and on plant lines."""
