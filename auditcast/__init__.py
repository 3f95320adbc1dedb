"""auditcast: access gateway and audit pipeline for Kubernetes and SSH."""

__version__ = "0.1.0"
