"""`swarmtrain bench byzantine`: attacks against the aggregators, in one process.

attacks: what a lying peer sends; simulation: one run of honest peers and attackers through the
node's own codecs, aggregators and scoring; command: the suite, its rows and its table.
"""
