"""The runs a server holds: each loaded once, with the batcher its requests share (textgen.request_batcher); loaded
again when training saves a newer checkpoint; the least recently used unloaded past a limit. Its errors are
:class:`ApiError`, a one-line JSON answer with its HTTP status (textgen.serve sends them)."""

from __future__ import annotations

import logging
import os
import threading
import time
import unicodedata
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from textgen.checkpoint import has_checkpoint
from textgen.config import SampleConfig
from textgen.errors import TextgenError, shown_start
from textgen.evaluation import bpc

logger = logging.getLogger("textgen")


class ApiError(Exception):
    """A one-line JSON error: 4xx for what the request asked, 5xx for what the server could not do."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Served:
    """One loaded run: the batcher its requests share, and its generator (for scoring)."""

    name: str
    batcher: object  # textgen.request_batcher.Batcher
    path: Path  # the run's directory
    version: tuple  # checkpoint_version(path) when it was loaded
    reloading: bool = False  # a newer checkpoint is being loaded (requests meanwhile get this one)

    @property
    def generator(self):  # textgen.generate.Generator
        return self.batcher.generator

    @property
    def current(self) -> bool:
        """Whether the run's checkpoint on disk is still the one loaded (never, once the run is gone)."""
        version = checkpoint_version(self.path)
        return bool(version) and version == self.version


def checkpoint_version(path: Path) -> tuple:
    """What changes when training saves a checkpoint to serve: its best metadata file (each save renames a new one
    into place), or the last one's while the run has no best; () when neither is there."""
    from textgen.checkpoint import meta_stamp

    for kind in ("best", "last"):
        if (stamp := meta_stamp(path, kind)) is not None:
            return kind, *stamp
    return ()


def files_stamp(path: Path) -> Optional[tuple]:
    """What changes when any file of the run directory is replaced, rewritten or cut short."""
    stamps = []
    try:
        for entry in os.scandir(path):
            if entry.is_file():
                stat = entry.stat()
                stamps.append((entry.name, stat.st_ino, stat.st_mtime_ns, stat.st_size))
    except OSError:
        return None
    return tuple(sorted(stamps))


def no_run(name: str, default: bool = False) -> ApiError:
    """The 404 for run name; default: the request named none, and name is the server's default, deleted since."""
    if default:  # "no run named 'demo'" answered a request that named no run
        return ApiError(f"the server's default run, {name!r}, is gone; name a run (GET /v1/models lists them)",
                        status=404)
    return ApiError(f"no run named {shown_start(name)}; GET /v1/models lists the runs", status=404)


class Runs:
    """The runs under a checkpoint directory (or the one run it is), each loaded once: the default run at
    start-up, so that a damaged one is refused at once, the others on first use."""

    def __init__(self, checkpoint_dir: Path, default: Optional[str], buckets: tuple, max_loaded: int = 4):
        from textgen.runs import find_run

        self.buckets = buckets  # engine sizes of each run's batcher
        self.max_loaded = max_loaded  # runs kept in memory; past it, the least recently used (not the default) goes
        # Resolved, so that a checkpoint directory that is itself a run (".") is named after its folder.
        self.checkpoint_dir = Path(checkpoint_dir).resolve()
        self._loaded: dict[str, Served] = {}
        self._last_used: dict[str, float] = {}  # run name -> time.monotonic() of its last request
        self._guard = threading.Lock()
        # Every batcher whose thread runs (it holds it), the retired ones that still finish requests too (stop()),
        # with its run's name: weakly, so that one whose thread has ended does not keep its model in memory.
        self._batchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._batchers_lock = threading.Lock()
        self._stopping = False
        self._described: dict = {}  # run directory -> (its metadata files' stamps, the metadata describe() shows)
        self._damaged: dict = {}  # run directory -> (files_stamp, the error a request's load met)
        found = find_run(self.checkpoint_dir, default)
        # Loaded here, not by get(): a run that cannot be loaded is the command's one-line error, not a request's
        served = self._load(found.name, found) if default is not None else self._first_servable(found)
        self.default = served.name
        self._keep(served)
        self._last_used[self.default] = time.monotonic()

    def _first_servable(self, latest: Path) -> Served:
        """The latest run, loaded, or, when it cannot be (a damaged run whose training was killed), the next that can
        be, with a warning: the server refused to start, with every other run good (under a service manager, for
        good), where its user had named no run."""
        from textgen.runs import default_order, list_runs

        try:
            return self._load(latest.name, latest)
        except TextgenError as error:
            others = [path for path in default_order(list_runs(self.checkpoint_dir)) if path != latest] \
                if latest != self.checkpoint_dir else []
            for path in others:
                try:
                    served = self._load(path.name, path)
                except (TextgenError, OSError):
                    continue
                logger.warning(f"warning: the latest run, {latest.name!r}, cannot be served ({self.inside(error)}); "
                               f"serving {path.name!r} as the default (name one with --run)")
                return served
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the requests still generating and stop every batcher, waiting up to timeout seconds in all (the
        server's exit); later loads and requests are refused."""
        with self._batchers_lock:
            self._stopping = True
            batchers = list(self._batchers.keys())
        deadline = time.monotonic() + timeout
        for batcher in batchers:
            batcher.stop(max(0.0, deadline - time.monotonic()))

    def paths(self) -> dict[str, Path]:
        from textgen.runs import list_runs

        return {path.name: path for path in list_runs(self.checkpoint_dir)}

    def describe_all(self, paths: dict[str, Path]) -> list[dict]:
        """describe() of every run in paths; what was kept of runs no longer there is dropped (a server that
        watches runs come and go would otherwise hold the metadata of each one it ever listed)."""
        # None: a run whose checkpoints went while the list was made (a thread each)
        described = [each for name, path in paths.items() if (each := self.describe(name, path)) is not None]
        live = set(paths.values())
        # list(): another request's describe() may add a run meanwhile (a thread each)
        self._described = {path: kept for path, kept in list(self._described.items()) if path in live}
        self._damaged = {path: kept for path, kept in list(self._damaged.items()) if path in live}
        return described

    def describe(self, name: str, path: Path) -> Optional[dict]:
        """The run's facts for GET /v1/models (or why it cannot be served); None when its checkpoints are gone."""
        from textgen.checkpoint import meta_stamp, servable_meta

        served = self._loaded.get(name)
        damaged = self._damaged.get(path)  # found damaged by a request after it was listed with its facts
        if damaged is not None and served is None:
            if damaged[0] == files_stamp(path):
                return dict(name=name, error=self.inside(damaged[1]))
            self._damaged.pop(path, None)  # a file of it changed (restored, or a new save): looked at again
        try:
            if served is not None and served.current:
                meta = served.generator.meta
            else:  # what loading it would serve, read again only when a metadata file changed (the playground asks
                # after every generation, and a run's metadata holds its history and vocabulary)
                stamp = tuple(meta_stamp(path, kind) for kind in ("best", "last"))
                kept = self._described.get(path)
                if kept is None or kept[0] != stamp:
                    try:  # a damaged weights file was listed with the run's facts, and its first request got a 500
                        kept = self._described[path] = stamp, servable_meta(path)
                    except TextgenError as error:
                        kept = self._described[path] = stamp, error
                if isinstance(kept[1], TextgenError):
                    raise kept[1]
                meta = kept[1]
        except TextgenError as error:
            return dict(name=name, error=self.inside(error))
        except FileNotFoundError:  # deleted while it was read
            return None
        if meta is None:  # both metadata files gone since the run was listed
            return None
        val = meta.state.val_loss
        return dict(name=name, corpus=Path(meta.corpus["path"]).name, characters=meta.corpus["length"],
                    epochs=meta.state.epoch, step_in_epoch=meta.state.step_in_epoch,
                    val_bpc=None if val is None else round(bpc(val), 4),
                    parameters=meta.model.parameter_count(), layers=meta.model.layers, units=meta.model.units,
                    vocabulary=meta.model.vocab_size)

    def inside(self, error: Exception) -> str:
        """The error's message with the paths inside the checkpoint directory, not where it is on this machine."""
        return str(error).replace(f"{self.checkpoint_dir}/", "")

    def holds(self, name: Optional[str]) -> bool:
        """Whether the run asked for (None: the default) is loaded (perhaps with a newer checkpoint to load)."""
        return (name or self.default) in self._loaded

    def get(self, name: Optional[str]) -> Served:
        """The named run (default: the server's run), loaded on first use and again when it has a newer checkpoint."""
        from textgen.runs import is_run_name, named_alike

        if name == "":  # not the default run, as null is: refused, as the command line and the Python API do
            raise ApiError("run is empty; leave it out (or null) for the server's default run, or name one that GET "
                           "/v1/models lists")
        asked, name = name, name or self.default
        paths = None  # the runs there, whatever their folders are called ("my run"): listed only for a new name
        if name not in self._loaded:  # a name in another Unicode form (a decomposed é) is its folder's, as with --run
            paths = self.paths()
            name = named_alike(name, paths) or name
        served = self._loaded.get(name)
        if served is not None:
            self._last_used[name] = time.monotonic()
            if served.current:
                return served
            if not has_checkpoint(served.path):  # deleted: as GET /v1/models no longer lists it, no longer served
                with self._guard:
                    self._unload(name, "its checkpoints are gone")
                raise no_run(name, default=asked is None)
            return self._reload(served)
        path = (self.paths() if paths is None else paths).get(name)
        if path is None:
            if asked and not is_run_name(unicodedata.normalize("NFC", name)):  # "../x": a bad request, not a 404
                raise ApiError(f"invalid run name {shown_start(name)}; name one of the runs GET /v1/models lists")
            raise no_run(name, default=asked is None)
        with self._guard:
            self._last_used[name] = time.monotonic()
            if name not in self._loaded:
                try:
                    self._keep(self._load(name, path))
                    self._damaged.pop(path, None)
                except (TextgenError, OSError) as error:  # a damaged run on the server: not the request's fault
                    if isinstance(error, FileNotFoundError) and not has_checkpoint(path):  # deleted meanwhile
                        raise no_run(name, default=asked is None) from None
                    logger.warning(f"run {name!r} cannot be loaded: {error}")
                    if isinstance(error, TextgenError):  # (not an OSError such as too many open files: it passes)
                        self._damaged[path] = files_stamp(path), error
                    raise ApiError(f"run {name!r} cannot be loaded: {self.inside(error)}", status=500) from None
            return self._loaded[name]

    def _keep(self, served: Served) -> None:
        """Hold served as its run's model (call with the guard held), unloading the run used least recently
        when more than max_loaded would be in memory, one generating nothing if there is one (a long stream's run
        was unloaded, and the next request loaded a second copy while it ran): its batcher finishes its requests,
        then frees its engine. A request that then names it loads it again."""
        self._loaded[served.name] = served
        while len(self._loaded) > self.max_loaded:
            others = [name for name in self._loaded if name not in (self.default, served.name)]
            if not others:
                return
            oldest = min(others, key=lambda name: (self._generating(name), self._last_used.get(name, 0.0)))
            self._unload(oldest, f"{self.max_loaded} runs are in memory and it was used least recently "
                                 "(--max-loaded-runs)")

    def _generating(self, name: str) -> bool:
        """Whether one of the run's batchers (a retired one, still finishing a long stream, too) has requests."""
        with self._batchers_lock:
            batchers = [batcher for batcher, run in self._batchers.items() if run == name]
        return any(batcher.busy() for batcher in batchers)

    def _unload(self, name: str, reason: str) -> None:
        """Forget the run's model; its batcher finishes the requests it runs, then frees its engine."""
        served = self._loaded.pop(name, None)
        if served is not None:
            served.batcher.retire()
            logger.info(f"run {name!r} unloaded: {reason}")

    def _load(self, name: str, path: Path) -> Served:
        from textgen.request_batcher import Batcher
        from textgen.generate import Generator

        version = checkpoint_version(path)  # before loading: a save in between costs one more reload, never a miss
        generator = Generator.load(path)
        with self._batchers_lock:  # not after stop() took the list: its thread would outlive the server
            if self._stopping:
                raise ApiError("the server is stopping", status=503)
            batcher = Batcher(generator, self.buckets, warm_up=True)
            self._batchers[batcher] = name
        return Served(name, batcher, path, version)

    def _reload(self, served: Served) -> Served:
        """The run with its newer checkpoint; its old batcher finishes what it runs, then stops. While one request
        loads it, the others get the model loaded before; so do all when the new checkpoint cannot be loaded."""
        with self._guard:
            if served.reloading or self._loaded.get(served.name) is not served:
                return self._loaded.get(served.name, served)  # an unloaded run's batcher sends its request back here
            served.reloading = True
        try:
            fresh = self._load(served.name, served.path)
        except (TextgenError, OSError) as error:
            logger.warning(f"run {served.name!r} has a new checkpoint that cannot be loaded ({error}); serving the "
                           "one loaded before")
            served.version = checkpoint_version(served.path)  # not tried again until the run changes again
            return served
        finally:
            served.reloading = False
        with self._guard:
            current = self._loaded.get(served.name)
            if current is None or current is served:
                self._keep(fresh)
        served.batcher.retire()
        if current is not None and current is not served:  # unloaded and loaded again meanwhile: that copy serves
            fresh.batcher.retire()
            return current
        state = fresh.generator.meta.state
        logger.info(f"run {served.name!r}: serving its new checkpoint ({state.checkpoint_epoch()}"
                    + ("" if state.val_loss is None else f", validation {bpc(state.val_loss):.4f} bpc") + ")")
        return fresh

    def submit(self, name: Optional[str], config: SampleConfig, deliver) -> tuple[Served, object]:
        """The request as a job of the run's current batcher: (the run as served, the job)."""
        from textgen.request_batcher import BatcherClosed

        while True:
            served = self.get(name)
            try:
                return served, served.batcher.submit(config, deliver)
            except BatcherClosed:  # replaced by a newer checkpoint and stopped between the two lines: try the new one
                if self._stopping:
                    raise ApiError("the server is stopping", status=503) from None
