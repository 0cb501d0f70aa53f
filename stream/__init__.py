"""The stream: checks HACCP critical limits on event time, stores readings, raises deviations."""
