"""The keyring: stored keys with a lifecycle, wrapped under a key-encryption key (work in progress)."""
