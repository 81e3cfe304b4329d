"""Screens of the dashboard: main, cluster detail, help, confirm."""
