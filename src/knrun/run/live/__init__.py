"""The live engine: a pool of workers sending chat requests at the pace its policy allows, the
pacing (slots and a rate gate) and the send-rate rules it follows."""
