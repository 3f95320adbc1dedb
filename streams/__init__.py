"""Faust stream processors: attribution, lock watch, session assembly, rules."""
