"""Customer segments from the stored windows: the scan and the /segments page."""
