"""Data curation: videos -> paired-track shards (curate.py), shards -> latent shards (precompute.py)."""
