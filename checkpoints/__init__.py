"""Checkpoint I/O shared by every model in the repository: file readers, tracker files, fingerprints."""
