"""`node` and `protocol` are also names of unrelated PyPI distributions: ours must win."""
from pathlib import Path

import node
import protocol

ROOT = Path(__file__).resolve().parents[1]


def test_packages_come_from_this_repository():
    assert Path(node.__file__).resolve().parent == ROOT / "node"
    assert Path(protocol.__file__).resolve().parent == ROOT / "protocol"


def test_protocol_does_not_import_node():
    """One direction of dependency: node -> protocol, never back."""
    for path in (ROOT / "protocol").glob("*.py"):
        text = path.read_text()
        assert "from node" not in text and "import node" not in text, path.name
