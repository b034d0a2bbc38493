"""The probe loss as a function of one weight, and the exact cache that makes it cheaper.

Every SAL estimator searches the same objective: the mean loss over probe batches with one
scored weight θ_l replaced, every other parameter frozen, the model in eval mode. This module
gives that objective (`LayerObjective`) in two forms that compute the same numbers:

- plain: the whole model runs on every batch, the weight bound with
  `torch.func.functional_call` and every other parameter detached, exactly as the reference
  code does;
- cached: when the probe is unaugmented (`ProbeBatches.fixed`), eval mode makes everything that
  does not depend on θ_l the same in every pass. The model is traced with `torch.fx`, split at the
  nodes that read θ_l, and the values the rest of the network needs (the probed module's input,
  and for a residual network also the block input that the skip path carries, or another head's
  output) are computed once per sample. Each pass then runs only the part of the graph that
  depends on θ_l, with only θ_l bound.

A model that fx cannot trace, a split whose output differs from the model's on a probe slice, a
cached value that the graph changes in place, or a cache over the memory budget falls back to
the plain form, and the reason is returned so the caller can record it.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.func import functional_call

#: the loss of a batch: (model outputs, targets) → scalar. Targets are opaque (a tensor, or a
#: dict of tensors for a multi-task model); they are only indexed by sample and passed on.
LossFn = Callable[[Any, Any], Tensor]
Batches = Sequence[tuple[Tensor, Any]]
#: a row index into a probe's samples: an index tensor or a contiguous slice
Index = Tensor | slice

#: cached activations are kept under this many bytes per group of layers unless told otherwise
DEFAULT_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class IndexedSamples:
    """A fixed probe given as its samples and, per pass, the index batches into them.

    With it a probe whose SGD passes reshuffle (as the runner's do) is still cacheable: in eval
    mode a sample's activations below layer l do not depend on which batch it sits in, so they
    are computed once per sample and gathered per batch. `train_order(i)` and `eval_order(i)` are
    called exactly when the plain path would call `train_batches(i)` and `eval_batches(i)`, so a
    generator they draw from advances identically on both paths.
    """

    x: Tensor
    targets: Any
    train_order: Callable[[int], Sequence[Index]]
    eval_order: Callable[[int], Sequence[Index]]
    #: samples per prefix evaluation when the cache is filled (memory, not values)
    chunk: int = 256


@dataclass(frozen=True)
class ProbeBatches:
    """The probe an estimator reads: the batches of each SGD pass and of each evaluation.

    `train_batches(i)`: the batches of the i-th SGD pass. `eval_batches(i)`: the batches the
    i-th evaluation averages over; i = -1 for the base loss. `fixed`: True when every pass sees
    the same, unaugmented samples; eval-mode activations that do not depend on the probed weight
    are then the same in every pass and caching them is exact. Without `samples`, fixed means
    that every call returns the very same batches; with `samples`, the passes may reorder them
    (see `IndexedSamples`).
    """

    train_batches: Callable[[int], Batches]
    eval_batches: Callable[[int], Batches]
    fixed: bool
    samples: IndexedSamples | None = None

    @classmethod
    def from_samples(
        cls,
        x: Tensor,
        targets: Any,
        train_order: Callable[[int], Sequence[Index]],
        eval_order: Callable[[int], Sequence[Index]],
        chunk: int = 256,
    ) -> ProbeBatches:
        """A fixed, unaugmented probe: batches are rows of `x` and `targets` in the passes' orders."""
        samples = IndexedSamples(x, targets, train_order, eval_order, chunk)

        def gather(order: Sequence[Index]) -> list[tuple[Tensor, Any]]:
            return [(x[_on(idx, x)], take(targets, _on(idx, x))) for idx in order]

        return cls(lambda i: gather(train_order(i)), lambda i: gather(eval_order(i)), True, samples)


class ProbeBatch(NamedTuple):
    """What an objective evaluates: the inputs of the (possibly truncated) network, targets, size."""

    inputs: tuple[Any, ...]
    targets: Any
    size: int


def take(targets: Any, index: Index) -> Any:
    """Rows `index` of a target tensor, or of every tensor of a multi-task target dict.

    None stays None, for losses that need no targets.
    """
    if targets is None:
        return None
    if isinstance(targets, Mapping):
        return {k: v[index] for k, v in targets.items()}
    return targets[index]


def _on(index: Index, like: Tensor) -> Index:
    return index.to(like.device) if isinstance(index, Tensor) else index


def _autocast(
    autocast: contextlib.AbstractContextManager | None,
) -> contextlib.AbstractContextManager:
    return autocast if autocast is not None else contextlib.nullcontext()


class LayerObjective:
    """L(w) = loss over probe batches with the weight `name` replaced by w: what estimators search.

    `train_pass(i)` and `eval_pass(i)` give the i-th pass's batches (call each once per pass,
    in the order the reference does: its side effects are the probe's random stream).
    `mean_loss` returns a float64 tensor on the device, so an evaluation costs no host sync.
    """

    def __init__(
        self,
        name: str,
        weight: Tensor,
        module: nn.Module,
        bound: dict[str, Tensor],
        buffers: dict[str, Tensor] | None,
        passes: _Passes,
        loss_fn: LossFn,
        autocast: contextlib.AbstractContextManager | None,
        path: str,
    ) -> None:
        self.name = name
        self.weight = weight
        self.path = path
        self._module = module
        self._bound = bound
        self._buffers = buffers
        self._passes = passes
        self._loss_fn = loss_fn
        self._autocast = autocast

    def train_pass(self, i: int) -> list[ProbeBatch]:
        return self._passes.train(i)

    def eval_pass(self, i: int) -> list[ProbeBatch]:
        return self._passes.eval(i)

    def loss(self, weight: Tensor, batch: ProbeBatch) -> Tensor:
        """The batch's mean loss (float32 scalar) at `weight`."""
        params = {**self._bound, self.name: weight}
        bindings = (params, self._buffers) if self._buffers is not None else params
        with _autocast(self._autocast):
            out = functional_call(self._module, bindings, batch.inputs)
            return self._loss_fn(out, batch.targets).float()

    @torch.no_grad()
    def mean_loss(self, weight: Tensor, batches: Sequence[ProbeBatch]) -> Tensor:
        """Sample-weighted mean loss over `batches`, summed in float64 in the reference's order."""
        total = torch.zeros((), dtype=torch.float64, device=weight.device)
        count = 0
        for batch in batches:
            total = total + self.loss(weight, batch).double() * batch.size
            count += batch.size
        return total / max(count, 1)

    def step(self, weight: Tensor, batch: ProbeBatch, lr: float) -> Tensor:
        """One plain SGD step on the batch: w + lr·∇L (lr > 0 climbs, lr < 0 descends)."""
        w = weight.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(w, batch), w)
        return (w + lr * grad).detach()

    def mean_loss_and_grad(
        self, weight: Tensor, batches: Sequence[ProbeBatch]
    ) -> tuple[Tensor, Tensor]:
        """Mean loss (float64 tensor) and its gradient in `weight` over all of `batches`."""
        w = weight.detach().requires_grad_(True)
        total = torch.zeros((), dtype=torch.float64, device=weight.device)
        grad = torch.zeros_like(w)
        count = sum(b.size for b in batches)
        for batch in batches:
            loss = self.loss(w, batch)
            (g,) = torch.autograd.grad(loss * (batch.size / max(count, 1)), w)
            grad += g
            total = total + loss.detach().double() * batch.size
        return total / max(count, 1), grad


# --- how a pass's batches are produced ------------------------------------------------------------


class _Passes:
    def train(self, i: int) -> list[ProbeBatch]:
        raise NotImplementedError

    def eval(self, i: int) -> list[ProbeBatch]:
        raise NotImplementedError


class _PlainPasses(_Passes):
    """The probe's own batches, whole inputs: the plain path."""

    def __init__(self, probe: ProbeBatches) -> None:
        self.probe = probe

    @staticmethod
    def _wrap(batches: Batches) -> list[ProbeBatch]:
        return [ProbeBatch((x,), y, len(x)) for x, y in batches]

    def train(self, i: int) -> list[ProbeBatch]:
        return self._wrap(self.probe.train_batches(i))

    def eval(self, i: int) -> list[ProbeBatch]:
        return self._wrap(self.probe.eval_batches(i))


class _Store:
    """Where a fixed probe's samples live and how each pass indexes them.

    The cache is filled chunk by chunk (`chunks`) and read back per pass (`train`, `eval`) as
    (key, targets, size) triples, the key addressing the cached rows.
    """

    def chunks(self) -> list[Tensor]:
        raise NotImplementedError

    def train(self, i: int) -> list[tuple[Any, Any, int]]:
        raise NotImplementedError

    def eval(self, i: int) -> list[tuple[Any, Any, int]]:
        raise NotImplementedError

    def read(self, cached: list[tuple[Tensor, ...]], key: Any) -> tuple[Tensor, ...]:
        raise NotImplementedError


class _BatchStore(_Store):
    """A fixed probe given as batches (the same tensors in every call): one cache entry per batch.

    The cached prefix is computed on exactly the batch the plain path would see, so the values
    are bit-identical by construction.
    """

    def __init__(self, probe: ProbeBatches, train: bool = True) -> None:
        self._blocks: list[tuple[Tensor, Any]] = []
        self._ids: dict[int, int] = {}
        self._train = [self._key(b) for b in probe.train_batches(0)] if train else []
        self._eval = [self._key(b) for b in probe.eval_batches(0)]

    def _key(self, batch: tuple[Tensor, Any]) -> int:
        x = batch[0]
        if id(x) not in self._ids:
            self._ids[id(x)] = len(self._blocks)
            self._blocks.append((x, batch[1]))
        return self._ids[id(x)]

    def chunks(self) -> list[Tensor]:
        return [x for x, _ in self._blocks]

    def _pass(self, keys: list[int]) -> list[tuple[Any, Any, int]]:
        return [(k, self._blocks[k][1], len(self._blocks[k][0])) for k in keys]

    def train(self, i: int) -> list[tuple[Any, Any, int]]:
        return self._pass(self._train)

    def eval(self, i: int) -> list[tuple[Any, Any, int]]:
        return self._pass(self._eval)

    def read(self, cached: list[tuple[Tensor, ...]], key: Any) -> tuple[Tensor, ...]:
        return cached[key]


class _IndexStore(_Store):
    """A fixed probe given as samples and index batches: rows are gathered from the cache."""

    def __init__(self, samples: IndexedSamples) -> None:
        self.samples = samples

    def chunks(self) -> list[Tensor]:
        return list(self.samples.x.split(max(1, self.samples.chunk)))

    def _pass(self, order: Sequence[Index]) -> list[tuple[Any, Any, int]]:
        out = []
        for idx in order:
            idx = _on(idx, self.samples.x)
            size = len(range(len(self.samples.x))[idx]) if isinstance(idx, slice) else len(idx)
            out.append((idx, take(self.samples.targets, idx), size))
        return out

    def train(self, i: int) -> list[tuple[Any, Any, int]]:
        return self._pass(self.samples.train_order(i))

    def eval(self, i: int) -> list[tuple[Any, Any, int]]:
        return self._pass(self.samples.eval_order(i))

    def read(self, cached: list[tuple[Tensor, ...]], key: Any) -> tuple[Tensor, ...]:
        return tuple(v[key] for v in cached[0])


class _CachedPasses(_Passes):
    """Batches whose inputs are cached activations of one layer's frontier."""

    def __init__(self, store: _Store, cached: list[tuple[Tensor, ...]]) -> None:
        self.store = store
        self.cached = cached

    def _wrap(self, keys: list[tuple[Any, Any, int]]) -> list[ProbeBatch]:
        return [ProbeBatch(self.store.read(self.cached, k), y, n) for k, y, n in keys]

    def train(self, i: int) -> list[ProbeBatch]:
        return self._wrap(self.store.train(i))

    def eval(self, i: int) -> list[ProbeBatch]:
        return self._wrap(self.store.eval(i))


# --- splitting a traced model at one parameter ---------------------------------------------------


class NoSplit(Exception):
    """The cached path does not apply to this layer; the message says why."""


_INPLACE_FUNCTIONS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.ilshift,
    operator.irshift,
    operator.imatmul,
}


def _mutates_first_argument(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether the node may write into its first argument (an in-place op)."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("_")
    if node.op == "call_function":
        if node.kwargs.get("inplace") or node.target in _INPLACE_FUNCTIONS:
            return True
        name = getattr(node.target, "__name__", "")
        return name.endswith("_") and not name.startswith("_")
    return False


def _reads_param(node: fx.Node, param: str) -> bool:
    """Whether a node reads the parameter: its leaf module owns it, or it fetches it directly."""
    if node.op == "call_module":
        return param.startswith(f"{node.target}.")
    if node.op == "get_attr":
        return node.target == param or param.startswith(f"{node.target}.")
    return False


@dataclass
class LayerSplit:
    """The traced graph cut at one parameter.

    `frontier`: the nodes (of the traced graph) whose per-sample values the rest of the network
    reads and that do not depend on the parameter; `suffix`: a module taking those values as
    positional inputs and returning the model's output, reading the parameter by its name.
    """

    param: str
    frontier: list[fx.Node]
    suffix: fx.GraphModule


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's graph in its current mode (eval for SAL: `if self.training` is resolved here)."""
    return fx.symbolic_trace(model)


def split_at(gm: fx.GraphModule, param: str) -> LayerSplit:
    """Cut the traced graph into what depends on `param` and what it reads from the rest.

    Nodes downstream of a node reading `param` form the suffix. Their inputs from outside it are
    either per-sample values (descendants of the input placeholder: the frontier, cached) or
    constants (parameters and what is computed from them alone: copied into the suffix).
    """
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise NoSplit(f"the traced model takes {len(placeholders)} inputs, the cache handles one")
    seeds = {n for n in nodes if _reads_param(n, param)}
    if not seeds:
        raise NoSplit(f"no node of the traced graph reads {param}")
    dependent = _downstream(nodes, seeds)
    per_sample = _downstream(nodes, set(placeholders))
    output = nodes[-1]
    consumers = [n for n in nodes if n in dependent and n.op != "output"] + [output]
    outside: list[fx.Node] = []
    for node in consumers:
        for arg in node.all_input_nodes:
            if arg not in dependent and arg not in outside:
                outside.append(arg)
    frontier = [n for n in nodes if n in outside and n in per_sample]
    constants = _upstream([n for n in outside if n not in per_sample])
    for node in nodes:
        if (
            node.op != "output"
            and _mutates_first_argument(node, gm)
            and node.args
            and node.args[0] in frontier
        ):
            raise NoSplit(f"node {node.name} writes in place into the cached value {node.args[0]}")
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {n: graph.placeholder(n.name) for n in frontier}
    for node in nodes:
        if node in constants or node in dependent or node is output:
            env[node] = graph.node_copy(node, lambda a: env[a])
    return LayerSplit(param, frontier, fx.GraphModule(gm, graph))


def _downstream(nodes: list[fx.Node], seeds: set[fx.Node]) -> set[fx.Node]:
    reached = set(seeds)
    for node in nodes:  # topological order
        if node not in reached and any(a in reached for a in node.all_input_nodes):
            reached.add(node)
    return reached


def _upstream(roots: list[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen


def prefix_module(gm: fx.GraphModule, frontier: Sequence[fx.Node]) -> fx.GraphModule:
    """A module computing the values of `frontier` (nodes of `gm`) from the input, nothing else."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    needed = _upstream(list(frontier))
    for node in gm.graph.nodes:
        if node in needed:
            env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(tuple(env[n] for n in frontier))
    return fx.GraphModule(gm, graph)


# --- building objectives for every layer --------------------------------------------------------------


def _flatten(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for k in sorted(value) for t in _flatten(value[k])]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    return []


def _same_output(a: Any, b: Any) -> bool:
    """Bit-identical, or equal up to rounding from a different batch composition."""
    fa, fb = _flatten(a), _flatten(b)
    if len(fa) != len(fb) or any(x.shape != y.shape for x, y in zip(fa, fb, strict=True)):
        return False
    for x, y in zip(fa, fb, strict=True):
        if not torch.equal(x, y):
            # a diverged model's outputs hold NaN or inf: the same non-finite values in the same
            # places count as equal, and the tolerance comes from the finite values
            magnitudes = x.detach().float().abs()
            finite = magnitudes[torch.isfinite(magnitudes)]
            scale = float(finite.max()) if finite.numel() else 0.0
            if not torch.allclose(
                x.float(), y.float(), rtol=1e-4, atol=1e-5 * max(scale, 1.0), equal_nan=True
            ):
                return False
    return True


def _per_sample(value: Any, rows: int) -> bool:
    """Whether a value is a tensor with one row per sample (what gathering rows needs)."""
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == rows


def _nbytes(values: Sequence[Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in values)


class ObjectiveFactory:
    """Builds each scored layer's objective for one SAL computation (one model, one probe).

    `cache=True` asks for the cached path; it is taken only for a fixed probe and a traceable
    model, layer by layer where the split checks out. `train_passes=False` says the estimator
    reads only evaluation passes, so training batches are not cached. `notes` collects why it was not, for the
    caller to record. The model is read, never changed; call it in eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        probe: ProbeBatches,
        autocast: contextlib.AbstractContextManager | None = None,
        cache: bool = True,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        train_passes: bool = True,
    ) -> None:
        self.model = model
        self.train_passes = train_passes
        self.loss_fn = loss_fn
        self.probe = probe
        self.autocast = autocast
        self.cache_bytes = cache_bytes
        self.params = {n: p.detach() for n, p in model.named_parameters()}
        self.buffers = dict(model.named_buffers())
        self.notes: list[str] = []
        self._traced: fx.GraphModule | None = None
        self._store: _Store | None = None
        self._cache = cache
        if cache and not probe.fixed:
            self._cache = False
            self.notes.append(
                "plain path: the probe is augmented or not fixed, so no activation repeats"
            )

    # the plain path -------------------------------------------------------------------------
    def plain(self, name: str) -> LayerObjective:
        """Today's reference objective: the whole model per batch, every other parameter detached."""
        return LayerObjective(
            name,
            self.params[name],
            self.model,
            self.params,
            self.buffers,
            _PlainPasses(self.probe),
            self.loss_fn,
            self.autocast,
            "plain",
        )

    @torch.no_grad()
    def base_loss(self, name: str) -> float:
        """The unperturbed eval-mode loss over `eval_batches(-1)` (the reference's default base)."""
        objective = LayerObjective(
            name,
            self.params[name],
            self.model,
            self.params,
            self.buffers,
            _PlainPasses(self.probe),
            self.loss_fn,
            self.autocast,
            "plain",
        )
        return float(objective.mean_loss(self.params[name], objective.eval_pass(-1)))

    # the cached path ------------------------------------------------------------------------
    def objectives(self, names: Sequence[str]) -> Iterator[LayerObjective]:
        """Each layer's objective in order, cached where exact and within the memory budget."""
        splits = self._splits(names) if self._cache else {}
        plain = [n for n in names if n not in splits]
        if not splits:
            for name in names:
                yield self.plain(name)
            return
        store = self._store_for_probe()
        groups = self._groups([splits[n] for n in names if n in splits], store)
        grouped = {s.param: g for g in groups for s in g}
        filled: dict[str, list[tuple[Tensor, ...]]] = {}
        for name in names:
            if name in plain:
                yield self.plain(name)
                continue
            if name not in filled:
                filled = self._fill(grouped[name], store)
            split = splits[name]
            cached = filled.pop(name)
            objective = self._checked(split, store, cached)
            yield objective if objective is not None else self.plain(name)

    def _splits(self, names: Sequence[str]) -> dict[str, LayerSplit]:
        try:
            self._traced = trace(self.model)
        except Exception as exc:  # fx raises many kinds; any of them means "not traceable"
            self.notes.append(
                f"plain path: torch.fx cannot trace the model ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            )
            return {}
        out = {}
        for name in names:
            try:
                out[name] = split_at(self._traced, name)
            except NoSplit as exc:
                self.notes.append(f"plain path for {name}: {exc}")
        return out

    def _store_for_probe(self) -> _Store:
        if self._store is None:
            samples = self.probe.samples
            self._store = (
                _IndexStore(samples)
                if samples is not None
                else _BatchStore(self.probe, self.train_passes)
            )
        return self._store

    def _groups(self, splits: list[LayerSplit], store: _Store) -> list[list[LayerSplit]]:
        """Consecutive layers whose cached values fit the budget together, filled in one pass."""
        assert self._traced is not None
        chunks = store.chunks()
        rows = sum(len(c) for c in chunks)
        probe = chunks[0][:2]
        with torch.no_grad(), _autocast(self.autocast):
            nodes = list(dict.fromkeys(n for s in splits for n in s.frontier))
            values = prefix_module(self._traced, nodes)(probe)
        per_row = {
            n: v.numel() * v.element_size() / max(len(probe), 1) if isinstance(v, Tensor) else 0.0
            for n, v in zip(nodes, values, strict=True)
        }
        groups: list[list[LayerSplit]] = []
        current: list[LayerSplit] = []
        current_nodes: set[fx.Node] = set()
        for split in splits:
            need = current_nodes | set(split.frontier)
            if current and sum(per_row[n] for n in need) * rows > self.cache_bytes:
                groups.append(current)
                current, current_nodes = [], set()
            current.append(split)
            current_nodes |= set(split.frontier)
        if current:
            groups.append(current)
        return groups

    @torch.no_grad()
    def _fill(self, group: list[LayerSplit], store: _Store) -> dict[str, list[tuple[Tensor, ...]]]:
        """One prefix pass over the probe for a group of layers: each layer's cached frontier."""
        assert self._traced is not None
        nodes = list(dict.fromkeys(n for s in group for n in s.frontier))
        prefix = prefix_module(self._traced, nodes)
        with _autocast(self.autocast):
            per_chunk = [prefix(x) for x in store.chunks()]
        position = {n: j for j, n in enumerate(nodes)}
        if isinstance(store, _IndexStore):  # one tensor per node over all samples, for gathering
            sizes = [len(x) for x in store.chunks()]
            gatherable = {
                n
                for n in nodes
                if all(
                    _per_sample(c[position[n]], k) for c, k in zip(per_chunk, sizes, strict=True)
                )
            }
            joined = {n: torch.cat([c[position[n]] for c in per_chunk]) for n in gatherable}
            return {  # an empty cache: _checked turns it into the plain path, with the reason
                s.param: [tuple(joined[n] for n in s.frontier)]
                if set(s.frontier) <= gatherable
                else []
                for s in group
            }
        return {
            s.param: [tuple(c[position[n]] for n in s.frontier) for c in per_chunk] for s in group
        }

    @torch.no_grad()
    def _checked(
        self, split: LayerSplit, store: _Store, cached: list[tuple[Tensor, ...]]
    ) -> LayerObjective | None:
        """The cached objective, if the split reproduces the model's output on a probe slice."""
        name = split.param
        if not cached:
            self.notes.append(f"plain path for {name}: a cached value is not a per-sample tensor")
            return None
        if _nbytes([v for c in cached for v in c if isinstance(v, Tensor)]) > self.cache_bytes:
            self.notes.append(
                f"plain path for {name}: its cached activations exceed {self.cache_bytes} bytes"
            )
            return None
        rows = slice(0, 4)
        x = store.chunks()[0][rows]
        with _autocast(self.autocast):
            expected = self.model(x)
            first = cached[0]
            got = split.suffix(
                *(v[rows] if isinstance(v, Tensor) and v.dim() > 0 else v for v in first)
            )
        if not _same_output(expected, got):
            self.notes.append(
                f"plain path for {name}: the traced split does not reproduce the model's output"
            )
            return None
        return LayerObjective(
            name,
            self.params[name],
            split.suffix,
            {},
            None,
            _CachedPasses(store, cached),
            self.loss_fn,
            self.autocast,
            "cached",
        )
