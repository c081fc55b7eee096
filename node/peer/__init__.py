"""A peer's life: the volunteer (wiring and loop; round apply, state sync, presence, reporting), bootstrap, the run
manifest, and the checkpoint on disk."""
