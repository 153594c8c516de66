"""A newly promoted champion served without a restart: the registry's champion aliases, watched.

`ChampionWatcher` looks at the aliases every `SENDWISE_CHAMPION_POLL_SECONDS` in a thread of its own. When one
points at a version other than the one served, it loads the changed versions (the others are kept as they
are), builds an engine serving them (`Engine.with_champions`: the same features, offers and logs) and hands it
to the service, which swaps it in with one assignment. A request holds the engine it started with to its end,
so none is dropped and each is decided by one set of models. A registry that cannot be read, or a version that
cannot be loaded, leaves the engine as it is (logged) and is tried again at the next look. Neither the look nor
the load brings MLflow into the service's process (`sendwise.champions`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sendwise.champions import ChampionAliases, load_champions_apart
from sendwise.settings import Settings

if TYPE_CHECKING:
    from serving.engine import Engine

logger = logging.getLogger(__name__)


class ChampionWatcher:
    """Polls the champion aliases; on a change, loads the new champions and calls `swap` with the new engine.

    `current` returns the engine being served (the one a new engine is built from)."""

    def __init__(self, settings: Settings, current: Callable[[], Engine], swap: Callable[[Engine], None]) -> None:
        self.settings = settings
        self.current = current
        self.swap = swap
        self.aliases = ChampionAliases(settings.tracking_uri)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.champion_poll_seconds):
            try:
                self.check()
            except Exception:  # a registry that cannot be read now is read again at the next look
                logger.exception("looking for new champions failed; serving the ones loaded")

    def check(self) -> bool:
        """Serve the registry's champions if they are not the ones served; whether the engine was swapped."""
        wanted = self.aliases.versions()
        engine = self.current()
        served = {name: model.version for name, model in engine.models.items()}
        if wanted == served:
            return False
        changed = {name: version for name, version in wanted.items() if served.get(name) != version}
        loaded = load_champions_apart(self.settings.tracking_uri, changed) if changed else {}
        models = {name: loaded[name] if name in changed else engine.models[name] for name in wanted}
        self.swap(engine.with_champions(models))
        logger.info("now serving %s (was %s)", wanted, served)
        return True
