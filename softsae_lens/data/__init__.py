"""Data: activations stored as arrays on disk and the offline text corpus."""
