"""What crosses the wire: pure data and functions. No sockets, threads or DHT here."""
