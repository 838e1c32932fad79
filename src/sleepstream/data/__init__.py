"""Reading the sleep-accel data folder and downloading it from PhysioNet."""
