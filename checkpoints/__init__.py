"""Checkpoint I/O shared by every model in the repository: file readers, tracker files, DeepSpeed folders
(ZeRO-3 gathering included) and fingerprints (see docs/checkpoints.md)."""
