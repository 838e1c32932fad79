"""Signal processing: activity counts from raw acceleration."""
