"""`python -m knrun`."""

from knrun.cli import main

main()
