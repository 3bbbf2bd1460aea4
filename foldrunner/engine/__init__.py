"""The engine: the scheduler (which fold next, where, retries, deadline) and the attempt (one fold's whole life)."""
