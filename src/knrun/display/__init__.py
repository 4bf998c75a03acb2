"""Everything knrun shows a person. The only package that imports rich."""
