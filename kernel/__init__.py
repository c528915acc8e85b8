"""The aman microkernel: plugin manager, live router and auth, event bus, lifecycle, store,
audit log and configuration. Every feature is a plugin (``builtin_plugins``)."""
