"""The real side of the round protocol: DHT validators, the RoundNet over hivemind."""
