"""Weight-space classifiers on one fixed INR architecture, with an invariant group readout.

Every weight-space method (GMN, PerParameterMLP, DeepSets, StatNN) produces an invariant feature
vector per INR, and all share one head: BatchNorm over the batch, then a two-layer MLP.

Why the readout matters (measured on digits_shared, docs/inr_cka.md): with the GMN's own graph head
(mean/max over all 38 nodes, mean over all 337 edges, LayerNorm) the pooled features differ between
INRs by ~1% of their size (across-INR std 0.007 vs mean 0.76 for the node mean), so the head sees an
almost constant input, the training loss stays near log(10) for many epochs and the model does not
even fit its training set. Here the final node / edge states are pooled per structural group (the
interchangeable hidden units of one layer; the edges of one parameter tensor between two such
groups; each ordered input/output unit alone), which is still exactly invariant to hidden-unit
permutations but keeps per-layer information apart, and BatchNorm standardises every pooled
feature across INRs so the INR-dependent part, not the shared constant, drives the logits.
"""

from __future__ import annotations

from typing import Any

from einops import rearrange
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from metaopt.graph.schema import NODE_LAYER, NODE_POSITION, NODE_TYPE

from .inr_data import activations, canonicalize_signs, neuron_nodes

WEIGHT_METHODS = ("gmn", "deepsets", "statnn", "mlp")  # mlp = PerParameterMLP (GMN without message passing)
# Reference for probe features: the INR's own output at the probe points (what the GMN's output node
# sees with probes > 0) through the same head; tells how much of a probed model's accuracy is pixel reading.
PROBE_REFERENCE = "probe_pixels"


def structural_groups(graph: Any) -> tuple[Tensor, Tensor]:
    """Permutation-invariant groups of one graph: (node group ids [N], parameter-edge group ids [E]).

    A node's group is (type, layer, position): hidden units (position -1) of one layer share a group,
    ordered units (inputs, outputs) get their own. An edge's group is (parameter tensor, source node
    group, destination node group). Both are numbered 0..G-1 in order of first appearance.
    """
    x = graph.x.long()
    key = torch.stack([x[:, NODE_TYPE], x[:, NODE_LAYER], x[:, NODE_POSITION]], dim=1)
    _, node_group = torch.unique(key, dim=0, return_inverse=True)
    src, dst = graph.edge_index.long()
    ekey = torch.stack([graph.edge_param_ids(), node_group[src], node_group[dst]], dim=1)
    _, edge_group = torch.unique(ekey, dim=0, return_inverse=True)
    return node_group, edge_group


class GroupPool(nn.Module):
    """Mean and max of per-item states within each structural group, for a batch of identical graphs.

    ``forward(states [B * n, d]) -> [B, 2 * G * d]`` where items of graph b are rows b*n .. b*n+n-1
    (the layout of a PyG `Batch` of copies of one graph) and ``groups`` [n] holds their group ids.
    """

    def __init__(self, groups: Tensor) -> None:
        super().__init__()
        self.num_groups = int(groups.max()) + 1
        self.register_buffer("groups", groups.long(), persistent=False)
        count = torch.zeros(self.num_groups).index_add_(0, groups.long(), torch.ones(len(groups)))
        self.register_buffer("inv_count", 1.0 / count.clamp(min=1.0), persistent=False)

    def forward(self, states: Tensor) -> Tensor:
        n, d = len(self.groups), states.shape[1]
        b = states.shape[0] // n
        idx = (self.groups[None, :] + self.num_groups * torch.arange(b, device=states.device)[:, None]).flatten()
        s = states.float()
        mean = torch.zeros(b * self.num_groups, d, device=s.device).index_add_(0, idx, s)
        mean = rearrange(mean, "(b g) d -> b g d", b=b) * self.inv_count[None, :, None]
        mx = torch.full((b * self.num_groups, d), float("-inf"), device=s.device)
        mx = mx.scatter_reduce(0, idx[:, None].expand(-1, d), s, reduce="amax", include_self=True)
        return torch.cat([rearrange(mean, "b g d -> b (g d)"), rearrange(mx, "(b g) d -> b (g d)", b=b)], dim=1)


def batch_norm_head(in_dim: int, hidden: int, out: int, dropout: float = 0.0) -> nn.Sequential:
    """BatchNorm over the batch (standardises each invariant feature across INRs) -> MLP -> logits."""
    return nn.Sequential(
        nn.BatchNorm1d(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(),
        nn.Dropout(dropout), nn.Linear(hidden, out),
    )


class WeightSpaceClassifier(nn.Module):
    """``forward(weights [B, E]) -> logits [B, k]`` for one shared INR structure.

    gmn / mlp: the GMN (or PerParameterMLP) body, per-node and per-edge output heads of width
    ``hidden``, then `GroupPool` over nodes and parameter edges. deepsets: a per-edge MLP on the
    values, mean and max over all edges (blind to structure by definition). statnn: per-tensor
    statistics (`StatNN.features`); probe_pixels (reference): the INR's output at the probe points.
    All then go through the same `batch_norm_head`. With ``canonical`` the weights are first
    sign-canonicalised (exact sign-flip invariance); ``probes`` adds probe features as node values. The batched
    structure is built once per batch size and cached: every INR has the same graph.
    """

    def __init__(
        self, method: str, graph: Any, num_classes: int, hidden: int = 32, layers: int = 4, dropout: float = 0.0,
        probes: int = 0, siren_layers: list[dict[str, Any]] | None = None, canonical: bool = False,
    ) -> None:
        super().__init__()
        from metaopt.nn import GMN, PerParameterMLP, StatNN
        from metaopt.nn.encoders import ValueEncoder

        if method not in WEIGHT_METHODS + (PROBE_REFERENCE,):
            raise ValueError(f"unknown weight-space method {method!r}; choose one of {WEIGHT_METHODS + (PROBE_REFERENCE,)}")
        if method == PROBE_REFERENCE and probes <= 0:
            raise ValueError(f"{PROBE_REFERENCE} reads the INR at the probe points: pass probes > 0")
        if probes and method not in ("gmn", "mlp", PROBE_REFERENCE):
            raise ValueError(f"probe features are node values: only gmn / mlp take them, not {method!r}")
        if probes and siren_layers is None:
            raise ValueError("probes > 0 needs siren_layers (INRSet.layers) to run the INRs at the probe points")
        if canonical and siren_layers is None:
            raise ValueError("canonical=True needs siren_layers (INRSet.layers) to find the hidden neurons")
        self.method, self.graph = method, graph
        if method in ("gmn", "mlp"):
            cls = GMN if method == "gmn" else PerParameterMLP
            self.net: nn.Module = cls(hidden=hidden, layers=layers, edge_in=1, node_in=probes, node_out=hidden, edge_out=hidden)
            node_group, edge_group = structural_groups(graph)
            self.node_pool, self.edge_pool = GroupPool(node_group), GroupPool(edge_group)
            feat_dim = 2 * hidden * (self.node_pool.num_groups + self.edge_pool.num_groups)
        elif method == "deepsets":
            self.net = nn.Sequential(ValueEncoder(1, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, 2 * hidden))
            self.edge_pool = GroupPool(torch.zeros(graph.num_params, dtype=torch.long))
            feat_dim = 4 * hidden
        elif method == PROBE_REFERENCE:
            self.net = nn.Identity()
            out_features = graph.param_shapes[graph.param_names.index(siren_layers[-1]["weight"])][0]
            feat_dim = probes * out_features
        else:
            self.net = StatNN(hidden=hidden, edge_in=1, graph_out=1, max_tensors=max(2, len(graph.param_shapes)))
            feat_dim = self.net.slot_dim * (self.net.max_tensors + 1)
        self.probes, self.siren_layers, self.canonical = probes, siren_layers, canonical
        if probes:
            # Fixed probe points (the same for every INR and every run), uniform in the image square.
            self.register_buffer("probe_coords", torch.rand(probes, 2, generator=torch.Generator().manual_seed(1234)) * 2 - 1)
            inputs, neurons = neuron_nodes(graph, siren_layers)
            self.register_buffer("probe_inputs", inputs, persistent=False)
            self.register_buffer("probe_neurons", torch.cat(neurons), persistent=False)
        self.head = batch_norm_head(feat_dim, 4 * hidden, num_classes, dropout)
        self._cache: dict[tuple[int, str], Any] = {}
        # Per-tensor scale (1 / rms of that parameter tensor over the training INRs): a scalar per
        # tensor commutes with neuron permutations and sign flips, and brings hidden weights (rms
        # ~0.03) to O(1) so the value encoder sees them at a usable resolution.
        self.register_buffer("edge_scale", torch.ones(graph.num_params))

    @torch.no_grad()
    def fit_scale(self, weights: Tensor) -> None:
        """Set `edge_scale` from training weights ``[M, E]``: one 1/rms per parameter tensor."""
        ids = self.graph.edge_param_ids()
        ms = torch.zeros(len(self.graph.param_shapes)).index_add_(0, ids, weights.pow(2).mean(0))
        rms = (ms / torch.tensor(self.graph.param_numels, dtype=ms.dtype)).sqrt()
        self.edge_scale.copy_(1.0 / rms.clamp(min=1e-8)[ids])

    def batched_structure(self, b: int) -> Any:
        """The structure for a batch of ``b`` INRs: GraphInputs (GMN-style) or a PyG Batch (StatNN)."""
        from metaopt.nn import prepare_graph

        device = self.edge_scale.device
        key = (b, str(device))
        if key not in self._cache:
            batch = Batch.from_data_list([self.graph] * b)
            self._cache[key] = prepare_graph(batch, device) if self.method in ("gmn", "mlp") else batch.to(device)
        return self._cache[key]

    def probe_features(self, weights: Tensor) -> Tensor:
        """Node values ``[B * N, probes]``: every neuron's activation at the probe points (inputs: the
        probe coordinates; bias nodes: 1). They permute and flip sign with their neuron, so the GMN
        stays equivariant (probe features of Kofinas et al. 2024 / NG-GNN)."""
        b, n = weights.shape[0], self.graph.num_nodes
        acts = activations(self.graph, self.siren_layers, weights, self.probe_coords)  # [[B, P, w_l]]
        vals = weights.new_ones(b, n, self.probes)
        vals[:, self.probe_inputs] = self.probe_coords.t().to(weights.dtype)[None]
        vals[:, self.probe_neurons] = torch.cat(acts, dim=2).transpose(1, 2)
        return vals.reshape(b * n, self.probes)

    def features(self, weights: Tensor) -> Tensor:
        """The invariant feature vector of every INR ``[B, F]`` (input of the shared head)."""
        if self.canonical:
            weights = canonicalize_signs(self.graph, self.siren_layers, weights)
        values = (weights * self.edge_scale).reshape(-1, 1)  # a Batch concatenates graphs' edges: row-major [B, E]
        if self.method in ("gmn", "mlp"):
            node_values = self.probe_features(weights) if self.probes else None
            out = self.net(self.batched_structure(weights.shape[0]), edge_values=values, node_values=node_values)
            return torch.cat([self.node_pool(out.node), self.edge_pool(out.edge)], dim=1)
        if self.method == "deepsets":
            return self.edge_pool(self.net(values))
        if self.method == PROBE_REFERENCE:
            return activations(self.graph, self.siren_layers, weights, self.probe_coords)[-1].flatten(1)
        return self.net.features(self.batched_structure(weights.shape[0]), values)

    def forward(self, weights: Tensor) -> Tensor:
        return self.head(self.features(weights))

    @torch.no_grad()
    def representations(self, weights: Tensor) -> list[Tensor]:
        """Per-layer graph-level representations (GMN / PerParameterMLP) for CKA: after every
        message-passing layer, the group means of the node states and of the parameter-edge states
        (forward hooks; invariant to hidden permutations), then the logits."""
        if self.method not in ("gmn", "mlp"):
            raise ValueError(f"representations: only GMN-style models have layers, not {self.method!r}")
        g = self.batched_structure(weights.shape[0])
        states: list[tuple[Tensor, Tensor]] = []
        hooks = [layer.register_forward_hook(lambda m, i, o: states.append(o)) for layer in self.net.layers]
        try:
            logits = self(weights)
        finally:
            for h in hooks:
                h.remove()
        reps = []
        for h, e in states:
            node = self.node_pool(h)[:, : self.node_pool.num_groups * h.shape[1]]  # the group means
            edge = self.edge_pool(e[: g.num_param_edges])[:, : self.edge_pool.num_groups * e.shape[1]]
            reps.append(torch.cat([node, edge], dim=1))
        return reps + [logits]
