"""BACKEND=null: `python -m workers.null.worker` runs `nullworker serve` (see worker.py)."""
