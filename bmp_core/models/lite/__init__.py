"""The lite backend: MediaPipe BlazePose (weights inside the wheel, offline, CPU): person detector, pose, mask."""
