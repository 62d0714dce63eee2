"""The benchmark suite: `make bench` (bench/run.py) and its baselines."""
