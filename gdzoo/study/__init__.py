"""Studies: plan run units, execute them, aggregate their numbers (``compare`` and ``sweep``)."""
