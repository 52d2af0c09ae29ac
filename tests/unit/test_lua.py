"""The Lua scripts' home: one file per script, each naming its KEYS and ARGV first, all registered by one loader."""

from __future__ import annotations

import re
from dataclasses import fields
from importlib import resources

import fakeredis.aioredis

from shared import lua

FOLDER = resources.files("shared.lua")
SCRIPT_FILES = sorted(
    p.name.removesuffix(".lua") for p in FOLDER.iterdir() if p.name.endswith(".lua") and p.name != "lib.lua"
)


def _body(name: str) -> list[str]:
    """The script's lines that are code (comments and blank lines left out)."""
    text = FOLDER.joinpath(f"{name}.lua").read_text()
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("--")]


def test_every_script_file_is_registered_by_the_loader_and_nothing_else_is() -> None:
    assert SCRIPT_FILES == sorted(f.name for f in fields(lua.Scripts))


def test_every_script_names_its_keys_and_args_as_locals_before_anything_else() -> None:
    for name in SCRIPT_FILES:
        lines = _body(name)
        header = [line for line in lines if re.match(r"local .+ = .*\b(KEYS|ARGV)\[\d+\]", line)]
        assert header, f"{name}.lua does not start by naming its KEYS and ARGV"
        first = lines.index(header[0])
        assert first == 0, f"{name}.lua runs code before naming its KEYS and ARGV"
        # After the header, KEYS is never indexed by number again: a key has one name in a script.
        after = lines[lines.index(header[-1]) + 1 :]
        assert not [line for line in after if re.search(r"KEYS\[\d+\]", line)], f"{name}.lua reads KEYS by number"


async def test_scripts_are_registered_once_per_client_and_run_with_the_shared_functions() -> None:
    first, second = fakeredis.aioredis.FakeRedis(), fakeredis.aioredis.FakeRedis()
    assert lua.scripts(first) is lua.scripts(first)
    assert lua.scripts(first) is not lua.scripts(second)
    # enqueue_job calls lib.lua's `enqueue`, so it runs only if the loader put the library in front of it.
    reply = await lua.scripts(first).enqueue_job(
        keys=["job", "result", "queue", "wake"], args=[b"job-bytes", 60_000, 1, "job_1", 4]
    )
    assert reply == 1
    assert await first.zscore("queue", "job_1") == 1
    assert await first.lrange("wake", 0, -1) == [b"1"]
