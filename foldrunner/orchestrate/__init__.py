"""The public run() and load_results(): the run dir, its lock, preflight, resume, orphans."""
