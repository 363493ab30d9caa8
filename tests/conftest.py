"""Let pytest-asyncio tests live beside pytest-trio's ``trio_mode``.

``trio_mode = true`` marks *every* coroutine test as a trio test, including
those marked ``@pytest.mark.asyncio``, which then run under trio and fail
(Textual needs asyncio). This hook runs after pytest-trio's and takes the
trio mark off tests that asked for asyncio.
"""

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("asyncio") is not None:
            item.own_markers = [m for m in item.own_markers if m.name != "trio"]


# Tests of everything but money run their nodes without a chain (as
# `chain.backend = "off"` does for a user): the embedded chain costs each node
# seconds at start. Money tests set MASK_CHAIN_* for their nodes explicitly
# (tests/integration/test_money*.py, maskd.devnet with a chain).
import os  # noqa: E402

os.environ.setdefault("MASK_CHAIN_BACKEND", "off")
