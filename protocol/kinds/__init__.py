"""Signed records beside the round's own (heartbeat, announcement, roster: protocol/records.py):
the organizer's checkpoints, a peer's metrics, and v3's commitments and receipts."""
