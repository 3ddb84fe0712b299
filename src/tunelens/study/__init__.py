"""The study: one typed config in, every stage's files and one report out."""
