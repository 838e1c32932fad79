"""Live detection: samples in, epoch results and sleep events out."""
