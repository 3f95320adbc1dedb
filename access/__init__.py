"""Identity and policy: OIDC login, roles, short-lived credentials, requests, MFA, locks."""
