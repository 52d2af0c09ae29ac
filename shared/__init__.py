"""What the API and the worker both speak: settings, Redis keys, ids, stored models and events."""
