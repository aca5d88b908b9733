"""Publisher keys, canonical manifests and trust store. Not implemented yet: see the capsule issue."""
