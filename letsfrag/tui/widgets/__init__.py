"""Widgets of the dashboard: header summary, keyed tables (hosts, clusters, events, shards), sparklines."""
