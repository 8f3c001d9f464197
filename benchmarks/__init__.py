"""Benchmarks: every praison_db backend against its raw driver. Run ``python -m benchmarks.run --help``."""
