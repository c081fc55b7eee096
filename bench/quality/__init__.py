"""`swarmtrain bench quality`: every strategy against data-parallel AdamW, at equal tokens.

presets: the tiers and the strategy presets (name -> settings); simulator: N workers in one
process through the node's own strategy and codec code; summary: rows and tables; plots: the
curves and the frontier; command: what `bench quality` and `bench frontier` run.
"""
