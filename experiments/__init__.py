"""Experiment drivers: command-line runs that train, evaluate and write reports with the `metaopt` library.

Each module is a `python -m experiments.<name>` entry point (also a console script, see pyproject).
`metaopt` never imports from here; drivers may import `metaopt` and `inner_tasks`.
"""
