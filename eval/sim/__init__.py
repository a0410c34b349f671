"""Simulation: the generated demo catalog and click log, simulated shoppers and the personalization benchmarks run
on them (`make demo-data`, `make eval-personal`)."""
