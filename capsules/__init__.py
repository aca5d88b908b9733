"""Hot-patch capsules (signed provider deliveries). Not implemented yet: see the capsule issue."""
