"""Data: synthetic chest CT, manifests (decathlon datalists), datasets with a caching choice."""
