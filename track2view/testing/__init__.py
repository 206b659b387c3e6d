"""What tests, the demo and the benchmarks build models from: tiny random-init components of the real classes
(tiny.py). Production code never imports this package."""
