"""What each command decides and computes, apart from its arguments and its printing."""
