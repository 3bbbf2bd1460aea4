"""What users see: the click CLI, the live view, status, logs, formatting."""
