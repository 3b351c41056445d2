"""Tasks bind data, transforms, models and metrics; the engine sees only the contract in base.py."""
