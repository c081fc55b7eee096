"""What runs: processes, time and I/O of a swarmtrain node."""

__version__ = "0.1.0"
