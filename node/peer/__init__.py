"""A peer's life: the volunteer (wiring, loop, state sync, round apply), bootstrap, the run
manifest, and the checkpoint on disk."""
