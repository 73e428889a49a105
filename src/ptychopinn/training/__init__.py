"""Lightning training (the only place besides the data module that imports Lightning)."""
