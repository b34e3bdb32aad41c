"""The two models an audit compares: loading them (`loading`), knowing who they are without
loading them (`identity`), and the forms erased models are published in (`formats`).

Nothing here imports torch at import time; the plugin imports this package when it loads.
"""
