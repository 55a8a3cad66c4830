"""Hypothesis profiles: how deep the property tests fuzz in `make test` and in `make test-long`.

The property tests write the example counts they were tuned with (`@settings(max_examples=N)`). `make test` runs
every one of them, but at most MAKE_TEST_MAX_EXAMPLES examples each (hypothesis's own default; the stateful
machines keep their counts): that keeps the 15-minute budget. `make test-long` runs them again at the counts
written in the tests (profile "long"), so the full fuzzing depth still runs. Pick with HYPOTHESIS_PROFILE
(`make-test`, the default, or `long`); `--hypothesis-profile` works too.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

MAKE_TEST_MAX_EXAMPLES = 100

settings.register_profile("make-test", max_examples=MAKE_TEST_MAX_EXAMPLES)
settings.register_profile("long")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "make-test"))


def _cap(test_settings: settings, cap: int) -> settings | None:
    """The test's settings with at most `cap` examples, or None when it already runs that few."""
    if test_settings.max_examples <= cap:
        return None
    return settings(test_settings, max_examples=cap)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    if settings.get_current_profile_name() != "make-test":
        return
    for item in items:
        fn = getattr(item, "obj", None)
        if isinstance(getattr(item.cls, "settings", None), settings):
            continue    # a RuleBasedStateMachine's TestCase: its steps are the cost; it keeps its settings
        if getattr(fn, "is_hypothesis_test", False):
            # Where @settings and @given keep the settings a test runs with, in the pinned hypothesis
            # (pyproject.toml): fail loudly if a new version moves them, rather than run counts nobody chose.
            assert hasattr(fn, "_hypothesis_internal_use_settings"), \
                f"{item.nodeid}: hypothesis no longer keeps a test's settings where tests/conftest.py looks"
            capped = _cap(fn._hypothesis_internal_use_settings, MAKE_TEST_MAX_EXAMPLES)
            if capped is not None:
                fn._hypothesis_internal_use_settings = capped
