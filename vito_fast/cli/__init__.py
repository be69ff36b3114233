"""The ``vito-fast`` command: one module per subcommand (``vito_fast/cli/<name>.py``).

Each subcommand module defines ``main(argv: list[str]) -> int`` and parses its own arguments, so
``vito-fast prepare --help`` loads only what ``prepare`` needs. The top layer: may import anything.
"""
