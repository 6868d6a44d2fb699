"""Configuration: the TOML file (load.py), its schema (model.py) and the value types the
location kinds share with it (types.py)."""
