"""Motion backends: animate a source face crop with a driver's motion."""
