"""`python -m ddpo` is the `ddpo` command."""

from ddpo.cli import main

main()
