"""Simulators of the services knrun talks to, for the demo, the tests and the benchmarks."""
