"""What runs around every call: hooks, call fingerprints, the flight recorder, its record format and the dump signal."""
