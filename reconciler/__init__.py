"""The reconciler: squishfiles in a folder -> desired state -> plan -> converge."""
