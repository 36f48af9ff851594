"""Worker entry points in the layout Vast's start script expects (`workers/<BACKEND>/worker.py`)."""
