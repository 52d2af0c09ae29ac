"""The HTTP face: an OpenAI-compatible Responses and Conversations API that never runs a model."""
