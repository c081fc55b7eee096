"""`swarmtrain bench scale`: round protocol v3 in one process, N = 16..1,000 (bytes counted to 10,000)."""
