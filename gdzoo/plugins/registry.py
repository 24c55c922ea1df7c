"""Name -> component tables, built from the plugins' ``register_*`` hooks.

Kinds: optimizer, transform, loss, model, problem.  Every component has a name, a description,
hyperparameters with defaults, and the plugin that registered it.  :meth:`Registry.optimizer`
turns a spec string into a :class:`~gdzoo.optim.chain.Chain`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from ..optim.chain import Chain
from ..optim.transform import Link, Transform, check_supports, declares, group_key
from ..errors import PluginError, SpecError, UnknownComponent
from .manager import IN_PROCESS, PluginInfo, Plugins, _hook_names, plugin_name
from ..optim.spec import Element, Hyper, bind, format_value, parse_chain, parse_element

HOOKS = {
    "optimizer": "register_optimizers",
    "transform": "register_transforms",
    "loss": "register_losses",
    "model": "register_models",
    "problem": "register_problems",
}
KINDS = tuple(HOOKS)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: str
    name: str
    obj: Any  # the class (or, for a named-chain optimizer, the chain spec string)
    description: str
    hyperparameters: tuple[Hyper, ...]
    plugin: str
    chain: str | None = None  # a named-chain optimizer's spec

    @property
    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hyperparameters}

    def check(self, values: dict[str, Any]) -> None:
        """Validate bound hyperparameter values (raises ValueError)."""
        if isinstance(self.obj, type) and issubclass(self.obj, Transform):
            self.obj().check(values)
        elif hasattr(self.obj, "check"):
            self.obj.check(values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "description": self.description,
            "stage": _stage(self.obj) if self.kind in ("optimizer", "transform") else None,
            "hyperparameters": {h.name: {"default": h.default, "type": h.type_name, "help": h.help}
                                for h in self.hyperparameters},
            "plugin": self.plugin,
            **({"chain": self.chain} if self.chain else {}),
        }

    def signature(self) -> str:
        """``name:h=default,...`` as a spec with every default written out."""
        opts = ",".join(f"{h.name}={format_value(h.default)}" for h in self.hyperparameters)
        return f"{self.name}:{opts}" if opts else self.name


def _stage(obj: Any) -> str:
    if isinstance(obj, str):
        return "chain"
    stage = obj.stage
    return stage if isinstance(stage, str) else "+".join(stage)


def _describe(obj: Any, description: str | None) -> str:
    if description:
        return description
    if isinstance(obj, str):  # a named chain: inspect.getdoc would return str's own docstring
        return ""
    text = getattr(obj, "description", "") or inspect.getdoc(obj) or ""
    return text.strip().splitlines()[0] if text.strip() else ""


class Registry:
    """The components every loaded plugin registered."""

    def __init__(self, plugins: Plugins | None = None):
        self.plugins = plugins if plugins is not None else Plugins()
        self._classes: dict[tuple, type] = {}  # optimizer_class() results
        self.tables: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            self._collect(kind)
        self._resolve_named_chains()

    # --- building -----------------------------------------------------------------------
    def _collect(self, kind: str) -> None:
        table = self.tables[kind]
        for info, impl in self.plugins.hookimpls(HOOKS[kind]):
            pending: list[Component] = []

            def register(obj, name=None, description=None, defaults=None, _info=info, _pending=pending):
                _pending.append(self._make(kind, obj, name, description, defaults, _info))

            try:
                impl.function(register=register)
            except Exception as exc:
                self.plugins.fail(info, f"{HOOKS[kind]} failed: {type(exc).__name__}: {exc}", exc)
                continue
            for comp in pending:
                if comp.name in table:
                    other = self.plugins.infos[table[comp.name].plugin]
                    self.plugins.fail(info, f"{kind} {comp.name!r} is registered by both "
                                            f"{self.plugins.who(other)} and {self.plugins.who(info)}; "
                                            f"the one from {self.plugins.who(other)} is kept")
                    continue
                table[comp.name] = comp

    def _make(self, kind, obj, name, description, defaults, info: PluginInfo) -> Component:
        where = f"{HOOKS[kind]}: register({obj!r})"
        chain = None
        if kind == "optimizer" and isinstance(obj, str):
            chain = obj
            hypers: tuple[Hyper, ...] = ()
        elif not isinstance(obj, type):
            raise TypeError(f"{where}: expected a class, got {type(obj).__name__}")
        else:
            hypers = tuple(getattr(obj, "hyperparameters", ()) or ())
            if not all(isinstance(h, Hyper) for h in hypers):
                raise TypeError(f"{where}: hyperparameters must be a tuple of gdzoo.Hyper")
        if kind in ("optimizer", "transform") and chain is None:
            if not issubclass(obj, Transform):
                raise TypeError(f"{where}: expected a gdzoo.Transform subclass")
            is_update = obj.stage == "update"
            if is_update != (kind == "optimizer"):
                raise TypeError(f"{where}: an optimizer's stage is 'update', a transform's is not "
                                f"(got stage {obj.stage!r})")
        if chain is None:
            check_supports(obj, where)
            if "native" in vars(obj) and not isinstance(vars(obj)["native"], property):
                warnings.warn(f"{where}: 'native' is replaced by native_preferred = True (for native = True) or "
                              f"nothing (for native = 'whole'); a native_step() is what gives a fused kernel",
                              DeprecationWarning, stacklevel=2)
        name = name or getattr(obj, "name", "") if chain is None else name
        if not name or not _NAME.match(name):
            raise ValueError(f"{where}: needs a valid name (letters, digits, '_', '-'), got {name!r}")
        if defaults:
            by_name = {h.name: h for h in hypers}
            unknown = [k for k in defaults if k not in by_name]
            if unknown:
                raise ValueError(f"{where}: defaults for unknown hyperparameter(s) {unknown}")
            hypers = tuple(dataclasses.replace(h, default=h.coerce(defaults[h.name])) if h.name in defaults else h
                           for h in hypers)
        return Component(kind, name, obj, _describe(obj, description), hypers, info.name, chain)

    def _resolve_named_chains(self) -> None:
        table = self.tables["optimizer"]
        for name, comp in list(table.items()):
            if comp.chain is None:
                continue
            try:
                links = self._links(comp.chain, stack=(name,))
                self._check_chain(comp.chain)  # exactly one optimizer, else next() below would fail
                update = next(c for c, _ in links if c.kind == "optimizer")
                values = dict(next(v for c, v in links if c.kind == "optimizer"))
                hypers = tuple(dataclasses.replace(h, default=values[h.name]) for h in update.hyperparameters)
                description = comp.description or f"chain: {comp.chain}"
                table[name] = dataclasses.replace(comp, hyperparameters=hypers, description=description)
            except (SpecError, ValueError) as exc:
                del table[name]
                self.plugins.fail(self.plugins.infos[comp.plugin], f"optimizer {name!r}: bad chain: {exc}")

    # --- lookup -------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return list(self._table(kind))

    def components(self, kind: str | None = None) -> list[Component]:
        kinds = KINDS if kind is None else (kind,)
        return [c for k in kinds for c in self._table(k).values()]

    def get(self, kind: str, name: str) -> Component:
        table = self._table(kind)
        if name not in table:
            raise UnknownComponent(kind, name, list(table))
        return table[name]

    def _table(self, kind: str) -> dict[str, Component]:
        if kind not in self.tables:
            raise UnknownComponent("kind", kind, list(KINDS))
        return self.tables[kind]

    def bind(self, kind: str, spec: str | Element, **overrides) -> tuple[Component, dict[str, Any]]:
        """Resolve a one-element spec (``doubling:n=5``) to its component and checked values."""
        element = parse_element(spec) if isinstance(spec, str) else spec
        whole = spec if isinstance(spec, str) else element.text
        comp = self._lookup(kind, element, whole)
        values = bind(element, comp.hyperparameters, kind, whole, base=comp.defaults)
        values.update(_coerce_overrides(comp, overrides))
        try:
            comp.check(values)
        except ValueError as exc:
            raise SpecError(f"{comp.name}: {exc}", whole, element.start, element.start + len(element.text)) \
                from None
        return comp, values

    def _lookup(self, kind: str, element: Element, whole: str) -> Component:
        try:
            return self.get(kind, element.name)
        except UnknownComponent as exc:
            raise SpecError(str(exc), whole, element.start, element.start + len(element.name)) from None

    # --- optimizers ---------------------------------------------------------------------
    def declares(self, spec: str, capability: str) -> bool:
        """Whether every component of a chain spec declares ``capability`` (``"batched"``...)."""
        return all(declares(comp.obj, capability) for comp, _ in self._links(spec))

    def undeclared(self, spec: str, capability: str) -> list[str]:
        """The components of a chain spec that do not declare ``capability``."""
        return [comp.name for comp, _ in self._links(spec) if not declares(comp.obj, capability)]

    def _links(self, spec: str, stack: tuple[str, ...] = ()) -> list[tuple[Component, dict[str, Any]]]:
        """Resolve a chain spec to (component, values) pairs, expanding named chains."""
        result: list[tuple[Component, dict[str, Any]]] = []
        for element in parse_chain(spec):
            comp = self._chain_component(element, spec)
            if comp.chain is not None and comp.name in stack:
                raise SpecError(f"optimizer {comp.name!r} is defined in terms of itself", spec, element.start)
            if comp.chain is not None:
                inner = self._links(comp.chain, stack + (comp.name,))
                for i, (c, v) in enumerate(inner):
                    if c.kind == "optimizer":
                        v = bind(element, c.hyperparameters, "optimizer", spec, base=v)
                        inner[i] = (c, v)
                result.extend(inner)
                continue
            result.append((comp, bind(element, comp.hyperparameters, comp.kind, spec,
                                      check=comp.check, base=comp.defaults)))
        return result

    def _chain_component(self, element: Element, spec: str) -> Component:
        for kind in ("optimizer", "transform"):
            if element.name in self.tables[kind]:
                return self.tables[kind][element.name]
        known = list(self.tables["optimizer"]) + list(self.tables["transform"])
        message = str(UnknownComponent("optimizer or transform", element.name, known))
        raise SpecError(message, spec, element.start, element.start + len(element.name))

    def _check_chain(self, spec: str) -> None:
        """One optimizer per chain and no transform twice, as SpecErrors pointing at the part."""
        elements = [(e, self._chain_component(e, spec)) for e in parse_chain(spec)]
        updates = [e for e, comp in elements if comp.kind == "optimizer"]
        if not updates:
            raise SpecError(f"no optimizer in {spec.strip()!r}: a chain needs exactly one, "
                            f"e.g. adam+{spec.strip()}", spec, 0, len(spec))
        if len(updates) > 1:
            extra = updates[1]
            raise SpecError(f"a chain takes exactly one optimizer, got {len(updates)} "
                            f"({', '.join(e.name for e in updates)})", spec, extra.start,
                            extra.start + len(extra.text))
        seen: set[str] = set()
        for e, _ in elements:
            if e.name in seen:
                raise SpecError(f"{e.name!r} appears twice in the chain; give it once", spec, e.start,
                                e.start + len(e.text))
            seen.add(e.name)

    def optimizer(self, spec: str, params: Iterable, *, batch: int | None = None, fused: bool = False,
                  **hyperparameters) -> Chain:
        """Build the optimizer a spec names, over ``params`` (tensors or param-group dicts).

        Keyword hyperparameters use torch.optim's names for the optimizer (``lr``, ``betas``...)
        and ``transform.name`` for a transform's (``**{"clip_norm.max_norm": 1.0}``); a name that
        belongs to one transform only may also be given bare (``max_norm=1.0``).

        ``fused=True`` runs torch's fused kernels or compiles the chain's step (see
        :class:`~gdzoo.optim.chain.Chain`).  ``batch=K``: the parameters carry a leading dimension
        of K configurations and each keyword value is a list of K values, one per configuration
        (numbers may differ; flags may not).
        """
        links, defaults = self.chain_parts(spec, batch=batch, **hyperparameters)
        return _build(Chain, spec, params, links, defaults, batch=batch, fused=fused)

    def chain_parts(self, spec: str, *, batch: int | None = None,
                    **hyperparameters) -> tuple[list[Link], dict[str, Any]]:
        """The links (fresh transform instances) and group defaults of a spec's chain."""
        pairs = self._links(spec)
        self._check_chain(spec)
        links, defaults = [], {}
        by_key: dict[str, tuple[Component, Hyper]] = {}
        bare: dict[str, list[str]] = {}
        for comp, values in pairs:
            transform = comp.obj()
            transform.name = comp.name
            keys = tuple((h.name, group_key(transform, h.name)) for h in comp.hyperparameters)
            links.append(Link(transform, keys))
            for h in comp.hyperparameters:
                key = group_key(transform, h.name)
                defaults[key] = values[h.name]
                by_key[key] = (comp, h)
                bare.setdefault(h.name, []).append(key)
        for name, value in hyperparameters.items():
            key = name if name in by_key else None
            if key is None and len(bare.get(name, [])) == 1:
                key = bare[name][0]
            if key is None:
                close = difflib.get_close_matches(name, list(by_key), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise SpecError(f"{spec!r} has no hyperparameter {name!r}{hint}; valid: {', '.join(by_key)}")
            hyper = by_key[key][1]
            try:
                defaults[key] = hyper.coerce(value) if batch is None else _batched(hyper, value, batch)
            except ValueError as exc:
                raise SpecError(f"{spec}: {exc}") from None
        return links, defaults

    def optimizer_class(self, spec: str, *, fused: bool = False, **hyperparameters) -> type[Chain]:
        """A ``torch.optim.Optimizer`` subclass for a spec, for code that takes an optimizer class
        (``ZeroRedundancyOptimizer(params, optimizer_class=cls, lr=...)``): ``cls(params,
        **hyperparameters)`` builds the chain, keywords on top of the ones given here."""
        if "batch" in hyperparameters:
            raise SpecError("optimizer_class builds one configuration's optimizer; batch= is for "
                            "Registry.optimizer on stacked parameters")
        self.optimizer(spec, [torch.zeros(1, requires_grad=True)], **hyperparameters)  # bad values fail now
        key = (spec, fused, repr(sorted(hyperparameters.items())))
        cls = self._classes.get(key)  # the same class for the same arguments (copies keep their type)
        if cls is None:
            cls = self._classes[key] = _spec_class(self, spec, fused, hyperparameters)
        return cls


def _build(cls, spec, params, links, defaults, batch=None, fused=False, chain=None):
    try:  # Chain.add_param_group checks every group's values, keyword ones included
        if chain is not None:  # an optimizer_class instance, being initialised
            Chain.__init__(chain, params, links, defaults, spec=spec, batch=batch, fused=fused)
            return chain
        return cls(params, links, defaults, spec=spec, batch=batch, fused=fused)
    except SpecError:
        raise
    except ValueError as exc:  # torch's wording ("Invalid learning rate: -1"), as a SpecError
        raise SpecError(f"{spec}: {exc}") from None


def _spec_class(registry: "Registry", spec: str, fused: bool, hyperparameters: dict[str, Any]) -> type[Chain]:
    base = dict(hyperparameters)

    def __init__(self, params, lr=None, **kwargs):  # lr may come second, as torch.optim's take it
        if lr is not None:
            kwargs["lr"] = lr
        links, defaults = registry.chain_parts(spec, **{**base, **kwargs})
        _build(None, spec, params, links, defaults, fused=fused, chain=self)

    def __reduce_ex__(self, protocol):  # pickle the class by its spec: it has no importable name
        return _restore_spec_instance, (spec, fused, base), self.__getstate__()

    return type(f"Chain[{spec}]", (Chain,), {"__init__": __init__, "__reduce_ex__": __reduce_ex__,
                                             "__module__": __name__, "__doc__": f"gdzoo optimizer {spec!r}"})


def _restore_spec_instance(spec: str, fused: bool, hyperparameters: dict[str, Any]) -> Chain:
    try:
        cls = default_registry().optimizer_class(spec, fused=fused, **hyperparameters)
    except SpecError:  # its plugin is gone here: the copy is a plain Chain (its links travel with it)
        cls = Chain
    return cls.__new__(cls)


def _batched(hyper: Hyper, values: Any, batch: int) -> Any:
    """K per-configuration values of one hyperparameter: one value if they agree, else a [K] tensor."""
    values = [hyper.coerce(v) for v in values]
    if len(values) != batch:
        raise ValueError(f"{hyper.name}: {len(values)} values for a batch of {batch}")
    if all(v == values[0] for v in values):
        return values[0]
    if hyper.kind == "float":
        return torch.tensor(values, dtype=torch.float64)
    if hyper.kind == "floats":
        return tuple(_batched(dataclasses.replace(hyper, kind="float"), column, batch) for column in zip(*values))
    raise ValueError(f"{hyper.name}: configurations of one batch must share it, got {values}")


def _coerce_overrides(comp: Component, overrides: dict[str, Any]) -> dict[str, Any]:
    by_name = {h.name: h for h in comp.hyperparameters}
    out = {}
    for key, value in overrides.items():
        if key not in by_name:
            raise SpecError(f"{comp.kind} {comp.name!r} has no option {key!r}; valid options: "
                            f"{', '.join(by_name) or 'none'}")
        try:
            out[key] = by_name[key].coerce(value)
        except ValueError as exc:
            raise SpecError(f"{comp.name}: {exc}") from None
    return out


_default: Registry | None = None


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object (a module, class or instance with ``@gdzoo.hookimpl`` functions)
    in this process, at once: the registry, ``gdzoo list``, ``gdzoo plugins`` and the CLI see its
    components from now on, also after the registry is rebuilt.  Returns the plugin's name.
    A plugin whose hooks fail, or whose components clash with registered ones, raises
    PluginError and is not registered."""
    global _default
    name = name or plugin_name(plugin)
    if not _NAME.match(name):
        raise PluginError(f"plugin name {name!r}: use letters, digits, '_' and '-'")
    if name in IN_PROCESS:
        raise PluginError(f"a plugin named {name!r} is already registered in-process; "
                          f"call gdzoo.unregister_plugin({name!r}) first, or give another name")
    if not _hook_names(plugin):
        raise PluginError(f"plugin {name!r} has no gdzoo hook implementations "
                          f"(functions decorated with @gdzoo.hookimpl, named after the hooks)")
    IN_PROCESS[name] = plugin
    try:
        registry = Registry()
        info = registry.plugins.infos.get(f"{name} (in-process)") or registry.plugins.infos.get(name)
        errors = info.errors if info is not None else ["not loaded"]
        if errors:
            raise PluginError(f"plugin {name!r}: {'; '.join(errors)}")
    except BaseException:
        del IN_PROCESS[name]
        raise
    _default = registry
    return name


def unregister_plugin(name: str) -> None:
    """Undo :func:`register_plugin`; the plugin's components are gone at once."""
    global _default
    if name not in IN_PROCESS:
        known = ", ".join(IN_PROCESS) or "none"
        raise PluginError(f"no in-process plugin named {name!r} (registered in-process: {known}); "
                          f"plugins installed as packages are turned off with GDZOO_DISABLE_PLUGINS")
    del IN_PROCESS[name]
    _default = Registry()


def default_registry(reload: bool = False) -> Registry:
    """The process-wide registry, built on first use from the installed plugins."""
    global _default
    if _default is None or reload:
        _default = Registry()
    return _default
