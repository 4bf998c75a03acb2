"""The use cases behind the commands: what each decides and computes, apart from its CLI."""
