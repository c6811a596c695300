"""mbrm's Hydra configuration, installed as the package ``mbrm.configs`` (pyproject.toml)."""
