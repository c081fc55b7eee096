"""Round protocol v2 as pure logic: election, roster checks, ledger, votes (docs/protocol.md)."""
