"""Built-in provider plugins: ``openssl`` (pyca/cryptography) and ``sodium`` (PyNaCl)."""
