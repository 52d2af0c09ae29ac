"""The default agent profiles, served when `TURNSTREAM_AGENTS` is not set.

The tools answer from fixed data so the mock model, the tests and a fresh `turnstream dev` all
exercise a full tool round (including a failing call) without any network access. They run on the
mock's model unless `TURNSTREAM_UPSTREAM_MODEL` names one that a real upstream serves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from shared.settings import get_settings
from worker.agents import Agent
from worker.tools import tool

_WEATHER: dict[str, tuple[str, str]] = {
    "bengaluru": ("Bengaluru", "24°C, partly cloudy, humidity 68%"),
    "bangalore": ("Bengaluru", "24°C, partly cloudy, humidity 68%"),
    "paris": ("Paris", "14°C, light rain, wind 18 km/h"),
    "tokyo": ("Tokyo", "19°C, clear skies, humidity 55%"),
    "london": ("London", "11°C, overcast, drizzle expected"),
    "new york": ("New York", "16°C, sunny, wind 12 km/h"),
    "sydney": ("Sydney", "22°C, sunny, humidity 60%"),
}


@tool
def get_weather(city: Annotated[str, Field(description="City name, e.g. 'Paris' or 'New York'")]) -> str:
    """Get the current weather for a city."""
    entry = _WEATHER.get(" ".join(city.split()).casefold())
    if entry is None:
        raise ValueError(f"no weather data for {city}")
    name, report = entry
    return f"{name}: {report}"


@tool
def get_time(
    timezone: Annotated[str, Field(description="IANA time zone, e.g. 'Asia/Kolkata'")] = "UTC",
) -> str:
    """Get the current date and time (ISO 8601) in an IANA time zone."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {timezone!r}") from exc
    return datetime.now(zone).isoformat(timespec="seconds")


UPSTREAM_MODEL = get_settings().upstream_model or "turnstream-mock"

AGENTS = [
    Agent(
        name="turnstream-mock",
        model=UPSTREAM_MODEL,
        instructions="You are a helpful assistant.",
        tools=(get_weather, get_time),
        description="General assistant that can look up the weather and the current time.",
    ),
    Agent(
        name="turnstream-mock-notools",
        model=UPSTREAM_MODEL,
        instructions="You are a helpful assistant.",
        description="The same assistant without tools.",
    ),
]
