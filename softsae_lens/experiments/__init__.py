"""Experiments that put SoftSAE's claims to a test (run each as ``python -m softsae_lens.experiments.<name>``)."""
