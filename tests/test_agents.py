from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from worker.agents import Agent, AgentRegistry, load_agents
from worker.default_agents import get_time, get_weather
from worker.tools import tool


@tool
def echo(text: str) -> str:
    """Repeat the text."""
    return text


def test_agent_defaults() -> None:
    agent = Agent(name="a", model="m")
    assert agent.instructions == ""
    assert agent.tools == ()
    assert agent.max_tool_rounds == 8
    assert agent.tool_timeout_s == 30.0
    assert agent.max_output_tokens is None


def test_approval_required_must_name_the_agents_own_tools() -> None:
    with pytest.raises(ValueError, match="approval_required names tools it does not have: send"):
        Agent(name="a", model="m", tools=(echo,), approval_required=("send",))


def test_agent_card_is_json_serialisable_and_lists_tool_names() -> None:
    agent = Agent(name="helper", model="gpt-x", tools=(echo,), description="Helps.", tool_timeout_s=5,
                  approval_required=("echo",))
    card = agent.card()
    assert card == {
        "name": "helper",
        "description": "Helps.",
        "model": "gpt-x",
        "tools": ["echo"],
        "max_tool_rounds": 8,
        "tool_timeout_s": 5,
        "context_budget_tokens": 128_000,
        "truncation": "disabled",
        "approval_required": ["echo"],
    }
    assert json.loads(json.dumps(card)) == card


def test_agent_exposes_its_tools_as_a_toolset() -> None:
    agent = Agent(name="a", model="m", tools=(echo,))
    assert agent.toolset.get("echo") is echo


def test_agent_accepts_a_list_of_tools_but_stores_a_tuple() -> None:
    agent = Agent(name="a", model="m", tools=[echo])  # type: ignore[arg-type]
    assert agent.tools == (echo,)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"name": " "}, "name must be non-empty"),
        ({"model": ""}, "model must be non-empty"),
        ({"max_tool_rounds": 0}, "max_tool_rounds"),
        ({"tool_timeout_s": 0}, "tool_timeout_s"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"tools": (echo, tool(name="echo")(lambda text: text))}, "duplicate tool name 'echo'"),
        ({"tools": (len,)}, "decorate functions with @tool"),
    ],
)
def test_agent_rejects_invalid_settings(kwargs: dict[str, object], problem: str) -> None:
    settings: dict[str, object] = {"name": "a", "model": "m", **kwargs}
    with pytest.raises(ValueError, match=problem):
        Agent(**settings)  # type: ignore[arg-type]


def test_registry_gets_by_name_and_defaults_to_the_first() -> None:
    first, second = Agent(name="one", model="m"), Agent(name="two", model="m")
    registry = AgentRegistry([first, second])
    assert registry.get("two") is second
    assert registry.get("three") is None
    assert registry.all() == [first, second]
    assert registry.default() is first
    assert "one" in registry
    assert registry.cards() == [first.card(), second.card()]


def test_registry_rejects_duplicate_agent_names() -> None:
    with pytest.raises(ValueError, match="duplicate agent name 'one'"):
        AgentRegistry([Agent(name="one", model="m"), Agent(name="one", model="n")])


def test_registry_rejects_being_empty() -> None:
    with pytest.raises(ValueError, match="at least one agent"):
        AgentRegistry([])


def test_load_agents_from_module_path() -> None:
    registry = load_agents("worker.default_agents")
    assert registry.default().name == "turnstream-mock"
    assert registry.default().toolset.names() == ["get_weather", "get_time"]
    notools = registry.get("turnstream-mock-notools")
    assert notools is not None
    assert notools.tools == ()


async def test_load_agents_from_file_path(tmp_path: Path) -> None:
    path = tmp_path / "my_agents.py"
    path.write_text(
        "from __future__ import annotations\n"
        "from pydantic import BaseModel\n"
        "from worker.agents import Agent\n"
        "from worker.tools import tool\n"
        "\n"
        "class Order(BaseModel):\n"
        "    sku: str\n"
        "    qty: int = 1\n"
        "\n"
        "@tool\n"
        "def place_order(order: Order) -> Order:\n"
        '    """Place an order."""\n'
        "    return order\n"
        "\n"
        "AGENTS = [Agent(name='shop', model='gpt-x', tools=(place_order,))]\n"
    )
    registry = load_agents(str(path))
    shop = registry.default()
    assert shop.name == "shop"
    order_tool = shop.toolset.get("place_order")
    assert order_tool is not None
    result = await order_tool.run('{"order": {"sku": "A1"}}', timeout_s=1)
    assert json.loads(result.output) == {"sku": "A1", "qty": 1}


def test_load_agents_missing_module_names_the_spec() -> None:
    with pytest.raises(ImportError, match=r"'no_such_pkg\.agents'"):
        load_agents("no_such_pkg.agents")


def test_load_agents_missing_file_names_the_spec(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.py")
    with pytest.raises(ImportError, match="not found"):
        load_agents(missing)


def test_load_agents_file_that_fails_to_import_names_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('bad config')\n")
    with pytest.raises(ImportError, match=r"broken\.py.*bad config"):
        load_agents(str(path))


def test_load_agents_without_agents_list_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.py"
    path.write_text("X = 1\n")
    with pytest.raises(ValueError, match="does not define AGENTS"):
        load_agents(str(path))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("AGENTS = 'turnstream-mock'\n", "must be a list of Agent, got str"),
        ("AGENTS = [1]\n", r"AGENTS\[0\] is a int"),
        ("AGENTS = []\n", "at least one agent"),
        (
            "from worker.agents import Agent\n"
            "AGENTS = [Agent(name='x', model='m'), Agent(name='x', model='m')]\n",
            "duplicate agent name 'x'",
        ),
    ],
)
def test_load_agents_rejects_malformed_agents(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "bad_agents.py"
    path.write_text(body)
    with pytest.raises(ValueError, match=problem):
        load_agents(str(path))


async def test_default_get_weather_answers_for_known_cities() -> None:
    result = await get_weather.run('{"city": "bengaluru"}', timeout_s=1)
    assert not result.is_error
    assert result.output.startswith("Bengaluru: ")
    assert "°C" in result.output


async def test_default_get_weather_unknown_city_is_an_error_result() -> None:
    result = await get_weather.run('{"city": "Atlantis"}', timeout_s=1)
    assert result.is_error
    assert json.loads(result.output) == {
        "error": "get_weather raised ValueError: no weather data for Atlantis"
    }


async def test_default_get_time_returns_iso_time_in_the_zone() -> None:
    result = await get_time.run('{"timezone": "Asia/Kolkata"}', timeout_s=1)
    assert not result.is_error
    parsed = datetime.fromisoformat(result.output)
    assert parsed.utcoffset() == timedelta(hours=5, minutes=30)


async def test_default_get_time_defaults_to_utc() -> None:
    result = await get_time.run("{}", timeout_s=1)
    assert datetime.fromisoformat(result.output).utcoffset() == timedelta(0)


async def test_default_get_time_unknown_zone_is_an_error_result() -> None:
    result = await get_time.run('{"timezone": "Mars/Olympus"}', timeout_s=1)
    assert result.is_error
    assert "unknown timezone 'Mars/Olympus'" in json.loads(result.output)["error"]
