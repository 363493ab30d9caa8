"""trio_mode and pytest-asyncio side by side (see conftest.py)."""

import asyncio

import pytest
import sniffio
import trio


@pytest.mark.asyncio
async def test_asyncio_marked_tests_run_under_asyncio():
    assert sniffio.current_async_library() == "asyncio"
    await asyncio.sleep(0)


async def test_unmarked_async_tests_run_under_trio():
    assert sniffio.current_async_library() == "trio"
    await trio.sleep(0)
