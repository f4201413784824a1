"""Cross-cutting plumbing shared by every entry script: errors, atomic files, logging."""
