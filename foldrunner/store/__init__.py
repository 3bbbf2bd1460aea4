"""What a run leaves on disk: the run dir's layout, the journal, the results table."""
