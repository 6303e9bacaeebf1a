"""neuroprobe's speed and memory benchmarks (not part of the test run): ``python -m benchmarks``."""
