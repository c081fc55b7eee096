"""Round protocol v3's exchange: a two-level robust reduce-scatter with audited chunk owners.

Pure code: who owns what in a round (grid), how an update is cut and encoded (chunks), how an
owner reduces its inputs bit-exactly (reduce), how an auditor catches a lying owner and how anyone
checks the proof (audit), and one round for every member at once over a message bus (round;
sketch: linear sketch audits, in that simulated round only).
What one member does in a round over a transport interface (member), and what its leader does
(leader): threads and waits, no sockets. docs/protocol.md "v3" is the design; `swarmtrain bench
scale` runs it at N = 16..1,000.
"""
