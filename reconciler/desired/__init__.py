"""Desired state: the types the planner reads, and loading them from a folder."""
