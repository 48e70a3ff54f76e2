"""Acting on plans: converge (the only caller of the runtime), the loop, status."""
