"""``python -m tunelens`` runs the command-line interface."""

from tunelens.cli import main

main()
