"""Modal screens: help, quit confirmation, the configurator's proposal."""
