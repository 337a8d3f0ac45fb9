"""Worker scripts run inside vendor toolkit venvs (stdlib + the vendor module only)."""
