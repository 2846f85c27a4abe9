"""Credentials and bundles for devices and roles (imports nothing else of cloud/)."""
