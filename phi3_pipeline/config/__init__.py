"""What a run is told and what follows from it: the typed settings (file, environment, flags), the
names of what it makes, derived from content, and the errors it raises on purpose."""
