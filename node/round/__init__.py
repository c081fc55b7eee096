"""Round protocol v2 as pure logic over a RoundNet (docs/protocol.md): election, leading, roster
checks, relayed fetches, the signed ledger and votes."""
