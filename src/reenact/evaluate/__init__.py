"""Objective quality measures."""
