"""The built-in plugins: one package per feature, each importing only ``sdk``."""
