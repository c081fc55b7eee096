"""One module per CLI command that is not a peer's own life: monitor, audit, doctor, demo,
ray-launch, pretrain. node/cli.py dispatches to them."""
