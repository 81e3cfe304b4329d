"""The read side shared by ``letsfrag status`` and the dashboard: one picture of a deployment read from Redis
(:mod:`.picture`, over the packed Lua reads of :mod:`.packed`) and its render rules (:mod:`.render`: the table
columns, cells, styles and summary line, in :mod:`rich` text without Textual)."""
