"""Job model: statuses and transitions, the job spec and its validation, task ids."""
