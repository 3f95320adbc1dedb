"""Collectors: kube and SSH gateways, local PTY recorder, and the spool they share."""
