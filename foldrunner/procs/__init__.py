"""Process trees: finding a fold's processes, the one termination path (TERM, grace, KILL), the reaper of what comes back, host memory readings."""
