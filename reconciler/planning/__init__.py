"""The pure planner: desired + actual state -> actions with reasons. No I/O."""
