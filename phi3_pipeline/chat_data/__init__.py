"""The chat data in the ultrachat_200k format: what a record must hold, the seeded split into the
tutorial's two JSON Lines files, the built-in sample, and the answer metric the evaluation gate uses."""
