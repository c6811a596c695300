"""The ``mbrm`` command line (filled in as features land)."""
def main() -> None:
    raise SystemExit("mbrm: no commands yet")
