"""Root pytest settings: never collect ``test_agent.py``.

``test_agent.py`` is the evaluation script (it scores V + M + C on real CarRacing-v3 episodes), and users know it
by that name, so it keeps it; it is not a test module. pytest must never import or collect it, also when run from
here as ``uv run pytest .`` or on the root directory in any other way; the tests live in tests/ (``testpaths``).
"""

collect_ignore = ["test_agent.py"]
