"""The registry: reading models (client), the promotion policy, gates, lease, audit trail, promote and roll back."""
