"""Things by name, as timm's `register_model`/`list_models` in miniature: backbones (`models/registry.py`) and
dataset loaders (`data/registry.py`) register themselves with a decorator and are looked up by config name."""

from __future__ import annotations


class Registry:
    def __init__(self, kind: str):
        self.kind = kind  # what the error for a name taken twice calls an entry: "backbone", "dataset"
        self._entries: dict[str, object] = {}

    def register(self, *names: str):
        """Decorator: the decorated class or function is the entry for each of `names`."""

        def register(entry):
            for name in names:
                taken = self._entries.get(name)
                if taken is not None and taken is not entry:
                    raise ValueError(f"a {self.kind} named {name!r} is registered already ({taken.__qualname__})")
                self._entries[name] = entry
            return entry

        return register

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str):
        return self._entries.get(name)
