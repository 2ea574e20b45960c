"""The plugin contract: hook specs, the family record, the registry, and the base classes plugins
subclass (public through :mod:`vlkit.plugin`)."""
