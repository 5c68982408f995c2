"""The engine's options in groups, resolved from the flat constructor parameters at fit time.

:class:`~nomad.engine.ContrastiveEmbedding` keeps the flat keyword API of scikit-learn,
openTSNE and umap-learn (``NOMAD(n_epochs=200, knn="cells")``, ``get_params``, ``clone``); its
signature (and its subclasses') is the one place a default is written. ``fit`` turns the
parameters into small frozen groups, each checking itself:

* :class:`IndexOptions`: the kNN graph, its index and its weights p(j|i);
* :class:`NoiseOptions`: the noise term (|M|, its estimate, the cell means standing in for it);
* :class:`ScheduleOptions`: epochs, learning rate, batches, momentum, exaggeration, clipping;
* :class:`InitOptions`: the starting positions;
* the trainer, one variant each: :class:`HeadsOptions` (draw heads, each with its k neighbours:
  NOMAD), :class:`EdgesOptions` (walk the edges of the symmetric graph: UMAP, cne),
  :class:`ParametricOptions` (an MLP encoder trained on heads) and
  :class:`ParametricEdgesOptions` (the encoder trained on edges: cne's parametric mode),
  picked by ``sampling`` and ``parametric``;
* :class:`DeviceOptions`: where to train.

``callbacks``, ``random_state`` and ``verbose`` concern the run, not an option group.
:func:`resolve` then checks what no group can check alone, each rule once, with one message that
names the option, why it does not apply, and the fix: an option of another trainer set away from
its default (``graph`` with ``sampling="heads"``, ``hidden`` with ``parametric=False``, ...), and
what several devices need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from .errors import InputError


def check_number(name: str, value, *, minimum: float, integer: bool = False, auto: bool = False,
                 strict: bool = False, call: str | None = None) -> None:
    """Raise unless ``value`` is a finite number ``>= minimum`` (``> minimum`` if ``strict``),
    whole if ``integer``; ``"auto"`` passes where ``auto``. The message names the option
    ``method.<name>``, or the argument of the method ``call`` when given."""
    if auto and value == "auto":
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum) and (not integer or float(value).is_integer())
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"> {minimum}" if strict else f">= {minimum}"
        extra = " or 'auto'" if auto else ""
        label = f"{call}({name}={value!r})" if call else f"method.{name}={value!r}"
        raise InputError(f"{label} is invalid: it must be {kind} {bound}{extra}")


def check_choice(name: str, value, allowed: Sequence) -> None:
    if isinstance(value, (list, tuple, dict, np.ndarray)) or value not in allowed:
        raise InputError(f"method.{name}={value!r} is invalid: choose one of "
                         f"{[a for a in allowed if a is not None]}")


def check_flag(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"method.{name}={value!r} is invalid: it must be true or false")


@dataclass(frozen=True)
class IndexOptions:
    """The kNN graph: k, p(j|i), the metric, where the graph comes from (``knn``, resolved:
    ``"cells"`` or ``"faiss_ivf"``; ``n_probe`` resolved to a count) and the cells of the index."""

    n_neighbors: int
    p_model: str
    metric: str
    knn: str
    n_probe: int
    ivf_nprobe: int
    n_cells: int | str
    cell_size: int
    max_cell_size: int | str
    cache_dir: str | None

    def __post_init__(self) -> None:
        check_number("n_neighbors", self.n_neighbors, minimum=1, integer=True)
        check_choice("p_model", self.p_model, ("inverse_rank", "uniform"))
        check_choice("metric", self.metric, ("euclidean", "inner_product"))
        check_choice("knn", self.knn, ("cells", "faiss_ivf"))
        check_number("n_probe", self.n_probe, minimum=1, integer=True)
        check_number("ivf_nprobe", self.ivf_nprobe, minimum=1, integer=True)
        check_number("n_cells", self.n_cells, minimum=1, integer=True, auto=True)
        check_number("cell_size", self.cell_size, minimum=1, integer=True)
        check_number("max_cell_size", self.max_cell_size, minimum=1, integer=True, auto=True)

    @staticmethod
    def resolve_knn(knn: str, devices: int) -> str:
        """``knn="auto"``: faiss IVF on one device (README "kNN indexes"), cells on several."""
        check_choice("knn", knn, ("auto", "cells", "faiss_ivf"))
        if knn == "auto":
            return "faiss_ivf" if devices == 1 else "cells"
        return knn

    @staticmethod
    def resolve_n_probe(n_probe: int | str, devices: int) -> int:
        """``n_probe="auto"``: 3 cells on one device (NP@10 +0.02-0.03, README), else 1."""
        check_number("n_probe", n_probe, minimum=1, integer=True, auto=True)
        if n_probe == "auto":
            return 3 if devices == 1 else 1
        return int(n_probe)


@dataclass(frozen=True)
class NoiseOptions:
    """The noise term: |M| and its distribution, how it is estimated (S draws shared by groups
    of G heads) and which cells enter as means (``approximate``, resolved: never None)."""

    n_noise: float
    noise: str
    noise_samples: int | str
    noise_group: int
    approximate: str
    mean_refresh: str
    mean_weight: str

    #: the fields only the trainers that draw heads read (heads, parametric): edge sampling
    #: draws its m = |M| negatives per edge itself and has no cell means
    HEADS_ONLY: ClassVar[tuple[str, ...]] = ("noise_samples", "noise_group", "approximate", "mean_refresh",
                                              "mean_weight")

    def __post_init__(self) -> None:
        check_number("n_noise", self.n_noise, minimum=0, strict=True)
        check_choice("noise", self.noise, ("uniform", "batch_neighbors"))
        check_number("noise_samples", self.noise_samples, minimum=1, integer=True, auto=True)
        check_number("noise_group", self.noise_group, minimum=1, integer=True)
        check_choice("approximate", self.approximate, ("none", "remote", "others"))
        check_choice("mean_refresh", self.mean_refresh, ("epoch", "step"))
        check_choice("mean_weight", self.mean_weight, ("paper", "reference"))


@dataclass(frozen=True)
class ScheduleOptions:
    """The optimisation: epochs, learning rate and batches ("auto" resolved at fit time, from n
    and the trainer), aggregation, momentum, the learning-rate schedule, both kinds of
    exaggeration and gradient clipping."""

    n_epochs: int
    learning_rate: float | str
    lr_scale: float
    batch_size: int | str
    aggregation: str
    momentum: float
    lr_schedule: str
    lr_decay_start: float
    early_exaggeration: float
    early_exaggeration_epochs: int
    spectrum_exaggeration_epochs: int
    late_exaggeration: float
    late_exaggeration_time: float
    clip_grad: float | None

    def __post_init__(self) -> None:
        check_number("n_epochs", self.n_epochs, minimum=1, integer=True)
        check_number("learning_rate", self.learning_rate, minimum=0, strict=True, auto=True)
        check_number("lr_scale", self.lr_scale, minimum=0, strict=True)
        check_number("batch_size", self.batch_size, minimum=1, integer=True, auto=True)
        check_choice("aggregation", self.aggregation, ("mean", "sum"))
        check_number("momentum", self.momentum, minimum=0)
        check_choice("lr_schedule", self.lr_schedule, ("linear", "reference", "constant"))
        check_number("spectrum_exaggeration_epochs", self.spectrum_exaggeration_epochs, minimum=0,
                     integer=True)
        if self.spectrum_exaggeration_epochs > self.n_epochs:
            raise InputError(f"method.spectrum_exaggeration_epochs={self.spectrum_exaggeration_epochs} is more "
                             f"than method.n_epochs={self.n_epochs}: the run would never reach its target "
                             "spectrum; lower it (cne: a third of the epochs) or raise n_epochs")
        if self.clip_grad is not None:
            check_number("clip_grad", self.clip_grad, minimum=0, strict=True)


@dataclass(frozen=True, eq=False)  # eq below: ``init`` may be an array
class InitOptions:
    """The starting positions: ``"pca"`` rescaled to std(PC1) = ``init_scale``, or an array."""

    init: str | np.ndarray
    init_scale: float

    def __eq__(self, other) -> bool:
        if not isinstance(other, InitOptions):
            return NotImplemented
        a, b = self.init, other.init
        if isinstance(a, str) or isinstance(b, str):
            same = isinstance(a, str) and isinstance(b, str) and a == b
        else:
            same = np.array_equal(a, b)
        return bool(same) and self.init_scale == other.init_scale

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if isinstance(self.init, str) and self.init != "pca":
            raise InputError(f"method.init={self.init!r} is invalid: use 'pca' or an (n, 2) array")
        check_number("init_scale", self.init_scale, minimum=0, strict=True)


@dataclass(frozen=True)
class HeadsOptions:
    """``sampling="heads"``, free positions (NOMAD): each step draws heads, each brings its k
    neighbours; the one trainer that runs on several devices. It has no options of its own
    (it reads the noise group's estimate and cell means)."""

    name: ClassVar[str] = "heads"
    #: the trainer's behaviour that an option of another trainer may state without being refused
    implies: ClassVar[dict[str, Any]] = {"push_noise": True}  # its noise points move too


@dataclass(frozen=True)
class EdgesOptions:
    """``sampling="edges"`` (UMAP, cne): each epoch walks the edges of the symmetric graph
    ``graph``; free positions, one device, exact noise (:mod:`nomad.edges`)."""

    graph: str
    push_noise: bool
    correct_repulsion: bool
    loss_log_every: int
    loss_log_pairs: int

    name: ClassVar[str] = "edges"
    implies: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        check_choice("graph", self.graph, ("binary", "umap"))
        check_flag("push_noise", self.push_noise)
        check_flag("correct_repulsion", self.correct_repulsion)
        check_number("loss_log_every", self.loss_log_every, minimum=0, integer=True)
        check_number("loss_log_pairs", self.loss_log_pairs, minimum=1, integer=True)


@dataclass(frozen=True)
class ParametricOptions:
    """``parametric=True`` (``sampling="heads"``): an MLP encoder of widths ``hidden`` trained by
    Adam on heads (as the heads trainer draws them); one device."""

    hidden: tuple[int, ...]

    name: ClassVar[str] = "parametric"
    implies: ClassVar[dict[str, Any]] = {"push_noise": True}  # the encoder moves noise points too

    def __post_init__(self) -> None:
        if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1 for w in self.hidden):
            raise InputError(f"method.hidden={list(self.hidden)!r} is invalid: give the encoder's layer "
                             "widths, integers >= 1 (e.g. [100, 100, 100]; [] for a linear map)")


@dataclass(frozen=True)
class ParametricEdgesOptions(ParametricOptions):
    """``parametric=True, sampling="edges"``: the encoder trained on the edges of the symmetric
    graph ``graph``, as :class:`EdgesOptions` walks them (cne's parametric mode; Parametric
    UMAP with ``graph="umap"``); one device, exact noise."""

    graph: str = "binary"

    name: ClassVar[str] = "parametric_edges"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("graph", self.graph, ("binary", "umap"))


TrainerOptions = HeadsOptions | EdgesOptions | ParametricOptions | ParametricEdgesOptions
TRAINERS: tuple[type, ...] = (HeadsOptions, EdgesOptions, ParametricOptions, ParametricEdgesOptions)
#: the trainers that walk the graph's edges (their graph, their batch of edges)
EDGE_TRAINERS: tuple[type, ...] = (EdgesOptions, ParametricEdgesOptions)
#: how to select each trainer (the fix an error message names)
SELECT = {"heads": "method.sampling=heads and method.parametric=false",
          "edges": "method.sampling=edges and method.parametric=false",
          "parametric": "method.parametric=true and method.sampling=heads",
          "parametric_edges": "method.parametric=true and method.sampling=edges"}


@dataclass(frozen=True)
class DeviceOptions:
    """Where to train: ``accelerator`` (resolved when training starts) and ``devices``."""

    accelerator: str
    devices: int

    def __post_init__(self) -> None:
        check_choice("accelerator", self.accelerator, ("auto", "cpu", "cuda"))
        check_number("devices", self.devices, minimum=1, integer=True)


@dataclass(frozen=True)
class EngineOptions:
    """Every option group of one model, checked: what :func:`resolve` returns."""

    index: IndexOptions
    noise: NoiseOptions
    schedule: ScheduleOptions
    init: InitOptions
    trainer: TrainerOptions
    devices: DeviceOptions


#: the constructor parameters that pick the trainer (in no group: they choose the variant)
SELECTORS = ("sampling", "parametric")
#: the constructor parameters of the run itself (in no group)
RUN = ("callbacks", "random_state", "verbose")


def group_fields(group: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(group))


def _same(value, default) -> bool:
    """Whether a parameter is at its default (a list from a config equals a tuple default)."""
    if isinstance(value, np.ndarray) or isinstance(default, np.ndarray):
        return False
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = tuple(value)
    if isinstance(default, Sequence) and not isinstance(default, str):
        default = tuple(default)
    return value == default


def resolve(params: dict[str, Any], defaults: dict[str, Any], *, method: str, multi_device: bool,
            default_approximate: str) -> EngineOptions:
    """The option groups of a model with parameters ``params`` (``get_params()``) and
    constructor defaults ``defaults``; every invalid value or combination raises one
    :class:`InputError` naming the option, why, and the fix."""
    p = params
    check_choice("sampling", p["sampling"], ("heads", "edges"))
    check_flag("parametric", p["parametric"])
    devices = DeviceOptions(p["accelerator"], p["devices"])
    n_devices = int(devices.devices)
    approximate = p["approximate"] or default_approximate
    check_choice("approximate", p["approximate"], (None, "none", "remote", "others"))

    # the trainer and what it needs of the rest
    if p["sampling"] == "edges" and (n_devices > 1 or approximate != "none"
                                     or default_approximate != "none"):  # NOMAD's noise needs cell means
        raise InputError("sampling='edges' trains on one device with exact noise: use it with "
                         "infonc_tsne, neg_tsne, ncvis or umap_loss, devices=1 and "
                         "approximate=none (or keep method.sampling=heads)")
    if p["parametric"]:
        trainer_cls = ParametricEdgesOptions if p["sampling"] == "edges" else ParametricOptions
    else:
        trainer_cls = EdgesOptions if p["sampling"] == "edges" else HeadsOptions
    _refuse_foreign_options(p, defaults, trainer_cls, default_approximate)
    if issubclass(trainer_cls, ParametricOptions):
        if isinstance(p["hidden"], str) or not isinstance(p["hidden"], Sequence):
            raise InputError(f"method.hidden={p['hidden']!r} is invalid: give the encoder's layer widths as "
                             "a list, e.g. [100, 100, 100]")
        own = {name: p[name] for name in group_fields(trainer_cls) if name != "hidden"}
        trainer = trainer_cls(tuple(p["hidden"]), **own)
    else:
        trainer = trainer_cls(**{name: p[name] for name in group_fields(trainer_cls)})
    if trainer_cls in EDGE_TRAINERS:
        check_number("n_noise", p["n_noise"], minimum=1, integer=True)  # m negatives per edge

    noise = NoiseOptions(**{name: p[name] for name in group_fields(NoiseOptions) if name != "approximate"},
                         approximate=approximate)
    knn = IndexOptions.resolve_knn(p["knn"], n_devices)
    n_probe = IndexOptions.resolve_n_probe(p["n_probe"], n_devices)
    index = IndexOptions(**{name: p[name] for name in group_fields(IndexOptions)
                            if name not in ("knn", "n_probe")}, knn=knn, n_probe=n_probe)
    if knn == "faiss_ivf" and not _same(p["n_probe"], defaults["n_probe"]):
        raise InputError(f"method.n_probe={p['n_probe']!r} counts the cells a point's neighbours are "
                         f"searched in with knn=cells, but the graph comes from knn={p['knn']} (faiss IVF): "
                         "set method.knn=cells, or method.ivf_nprobe for the IVF search")
    if knn == "cells" and not _same(p["ivf_nprobe"], defaults["ivf_nprobe"]):
        raise InputError(f"method.ivf_nprobe={p['ivf_nprobe']!r} counts the lists faiss IVF searches, but "
                         f"the graph comes from the index's cells (knn={p['knn']}): set method.knn=faiss_ivf, "
                         "or method.n_probe for the cells")
    if isinstance(trainer, EDGE_TRAINERS) and trainer.graph == "umap" and index.metric != "euclidean":
        raise InputError("graph='umap' needs Euclidean distances: set method.metric=euclidean")
    if noise.approximate == "none":
        for name in ("mean_refresh", "mean_weight"):
            if not _same(p[name], defaults[name]):
                raise InputError(f"method.{name}={p[name]!r} sets the cell means, but approximate='none' "
                                 "has none (every noise point is exact): set method.approximate=remote "
                                 f"or others, or leave method.{name} at {defaults[name]!r}")

    schedule = ScheduleOptions(**{name: p[name] for name in group_fields(ScheduleOptions)})
    if not _same(p["lr_scale"], defaults["lr_scale"]) and (
            schedule.learning_rate != "auto" or schedule.aggregation != "mean"
            or isinstance(trainer, ParametricOptions)):
        raise InputError(f"method.lr_scale={p['lr_scale']!r} sets the 'auto' learning rate lr_scale * n of "
                         "free positions under mean aggregation, but this model's rate is "
                         + (f"method.learning_rate={schedule.learning_rate!r}" if schedule.learning_rate != "auto"
                            else "Adam's 1e-3 (parametric)" if isinstance(trainer, ParametricOptions)
                            else "1.0 (sum aggregation)")
                         + f": set one of the two, or leave method.lr_scale at {defaults['lr_scale']!r}")
    init = InitOptions(p["init"], p["init_scale"])

    # what several devices need (each device trains the points of its cells)
    if n_devices > 1:
        if not multi_device:
            raise InputError(f"devices={n_devices}: {method} runs on one device (its noise is uniform over "
                             "all points); use method=nomad for several devices")
        if isinstance(trainer, ParametricOptions):
            raise InputError("parametric=true runs on one device: drop trainer.devices or set "
                             "method.parametric=false")
        if noise.approximate == "none":
            raise InputError("approximate='none' keeps all noise exact, which needs every point on one "
                             "device: use approximate='remote' with several devices")
        if index.knn == "faiss_ivf":
            raise InputError(f"knn=faiss_ivf lets kNN edges cross cells, and so devices; with "
                             f"devices={n_devices} use method.knn=cells (or auto)")
        if index.n_probe > 1:
            raise InputError(f"n_probe={index.n_probe} lets kNN edges cross cells, and so devices; with "
                             f"devices={n_devices} keep method.n_probe=1")
        if p["callbacks"] is not None:
            raise InputError("callbacks run on one device: drop them or set devices=1")
    return EngineOptions(index=index, noise=noise, schedule=schedule, init=init, trainer=trainer,
                         devices=devices)


def _refuse_foreign_options(p: dict[str, Any], defaults: dict[str, Any], trainer_cls: type,
                            default_approximate: str) -> None:
    """An option that only other trainers read, set away from its default, would be ignored
    silently: refuse it, naming the trainers that read it and how to select the closest one
    (free or parametric as this model is, then sampling as it does, where one reads it)."""
    own = set(group_fields(trainer_cls))
    parametric, edges = issubclass(trainer_cls, ParametricOptions), trainer_cls in EDGE_TRAINERS
    readers: dict[str, list[str]] = {}
    for other in sorted(TRAINERS, key=lambda c: (issubclass(c, ParametricOptions) != parametric,
                                                 (c in EDGE_TRAINERS) != edges)):
        for name in group_fields(other):
            if other is not trainer_cls and name not in own:
                readers.setdefault(name, []).append(other.name)
    if edges:  # the noise estimate and cell means of the heads samplers
        for name in NoiseOptions.HEADS_ONLY:
            readers[name] = ["parametric", "heads"] if parametric else ["heads", "parametric"]
    for name, owners in readers.items():
        value, default = p[name], defaults[name]
        if name == "approximate":  # None stands for the method's own default
            value, default = value or default_approximate, default or default_approximate
        if _same(value, default) or (name in trainer_cls.implies and _same(value, trainer_cls.implies[name])):
            continue
        names = " and ".join(f"the {owner} trainer" for owner in owners)
        raise InputError(f"method.{name}={value!r} is read by {names} only, but this model trains with "
                         f"the {trainer_cls.name} trainer ({SELECT[trainer_cls.name]}), which would ignore "
                         f"it: set {SELECT[owners[0]]}, or leave method.{name} at its default {default!r}")
