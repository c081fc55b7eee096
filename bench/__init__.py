"""Benchmarks and their harnesses, outside the runtime: nothing under node/ or protocol/ imports this
package (tests/test_imports.py holds that). `swarmtrain bench ...` imports it lazily. Results: bench/results/."""
