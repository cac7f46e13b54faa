"""Everything that produces batches. Knows nothing of models: imports nothing from `videogen`."""
