"""``letsfrag-top``: the live Textual dashboard of a deployment (entry points in :mod:`letsfrag.tui.app`)."""
