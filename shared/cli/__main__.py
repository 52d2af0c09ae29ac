"""`python -m shared.cli`: the `turnstream` command where its script is not on PATH."""

from shared.cli.main import main

main()
