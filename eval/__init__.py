"""Runs → metrics → reports: ranking metrics, the evaluation CLI and the benchmarks."""
