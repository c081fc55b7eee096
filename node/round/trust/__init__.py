"""The verified chain: the rules every roster must pass (chain), how a peer moves to a better
chain (catchup), the organizer's checkpoints (anchor), the marks rosters leave (marks), and the
quorum a head needs (votes). docs/trust-model.md is the design."""
