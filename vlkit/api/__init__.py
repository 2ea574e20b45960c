"""The user-facing pipeline: prompts to Requests, the engine loop thread, responses."""
