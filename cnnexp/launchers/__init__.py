"""Launcher logic behind cnnexp's Hydra launcher plugins (hydra_plugins/cnnexp_plugins)."""
