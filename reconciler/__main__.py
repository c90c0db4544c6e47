from reconciler.entry.cli import run

run()
