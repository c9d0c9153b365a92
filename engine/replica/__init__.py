"""A live replica: a second archive that follows a primary's segment log (see follower.py)."""
