"""Training: the one loop for 1 or K configurations (``loop``), its batched form (``batched``),
problems, losses and models (``problem``), CSV data (``data``) and task metrics (``metrics``)."""
