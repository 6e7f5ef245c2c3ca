"""What every package shares, below all of them: the registry of named things, the run directory's names, and
weight I/O. It imports no other project package."""
