"""Small shared helpers of every tier: atomic JSON files, process identities."""
