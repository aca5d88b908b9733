"""First-class fakes for tests: providers built from real backends, with named faults."""
