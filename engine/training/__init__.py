"""Training: the Accelerate loop, its data pipeline, checkpoints, schedules, seeding and in-loop validation."""
