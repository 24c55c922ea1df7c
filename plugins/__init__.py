"""gdzoo's built-in plugins, installed as the package ``gdzoo.default_plugins``."""
