"""Benchmarks and their harnesses, outside the runtime: nothing under node/ or protocol/ imports this
package (tests/test_imports.py holds that) but `swarmtrain bench ...`, lazily, through bench/cli.py.

cli: every benchmark's subcommand, flags and duration. quality/: strategies at equal tokens (and
`bench frontier`); tune: their hyperparameter search; byzantine/: attacks on the aggregators;
swarm, hivemind_peer, linkemu: real node processes, the hivemind baseline, emulated links;
exchange, upload: the exchange's loop and one round's uploads. tables, extras: shared by them.
Results: bench/results/."""
