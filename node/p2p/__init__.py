"""The real network: hivemind's DHT, libp2p update streams, the RoundNet the round protocol runs over,
DHT record validators, peer addresses, identity keys and signed telemetry."""
