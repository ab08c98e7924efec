"""What every layer uses.

files.py   whole-file atomic writes (local or gs://)
errors.py  InputError and RunStopped
cli.py     the commands' one-line errors and exit statuses, the CPU
           device split
quiet.py   what the commands hide of the libraries' output
"""
