"""Forward model of ptychography: pure tensor functions and thin modules."""
