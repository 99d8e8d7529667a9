"""A per-step cache over a `lmrs._core.StepPlan`: each array is copied out of Rust once, on first use."""

from __future__ import annotations


class PlanView:
    """Attribute access like the StepPlan, but each array is fetched at most once per step."""

    __slots__ = ("_plan", "_cache")

    def __init__(self, plan):
        self._plan = plan
        self._cache = {}

    def __getattr__(self, name):
        cache = self._cache
        try:
            return cache[name]
        except KeyError:
            value = getattr(self._plan, name)
            cache[name] = value
            return value

    def replace(self, name, value):
        """Use `value` for `name` this step (the draft model's tokens in `input_ids`)."""
        self._cache[name] = value

    @property
    def raw(self):
        return self._plan
