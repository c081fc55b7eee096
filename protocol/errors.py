"""The one error type raised for anything malformed that arrived from the network or disk."""


class ProtocolError(ValueError):
    """Input from a peer (or a file) does not follow the protocol; the message says how."""
