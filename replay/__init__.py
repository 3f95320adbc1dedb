"""Replay API/UI, terminal playback and export, SIEM forwarders."""
