"""What every layer uses; imports nothing of the package above it.

files.py       whole-file atomic writes (local or gs://)
errors.py      InputError and RunStopped
preemption.py  SIGTERM/SIGINT: save and stop at a safe point
sharding.py    the 'data' mesh, replication, batch placement
cli.py         the commands' one-line errors and exit statuses, the CPU
               device split
quiet.py       what the commands hide of the libraries' output
"""
