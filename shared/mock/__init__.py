"""The built-in mock model: a real OpenAI-compatible endpoint for dev mode and tests, not part of the contract."""
