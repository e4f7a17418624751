"""Forward passes of the worker's dense models in numpy float32: DCN-V2
(worker/dcn.c) and the CAN co-action unit (worker/can.c).

Block names and layouts are the worker's (worker/dcn.h):
  full cross layer l: cross.l.W  N x N, cross.l.b N
  MoE cross layer l:  cross.l.U  K x N x r, cross.l.V K x r x N,
                      cross.l.C  K x r x r (use_c), cross.l.G K x N (K > 1),
                      cross.l.b  N
  deep tower j:       deep.j.W   out x in, deep.j.b out (ReLU after every layer)
  output:             w_out      F, b_out 1
Every operation is done in float32 in the order the C code does it where
that order is ours (element-wise passes, CAN's per-example loops, the
output sum); products that C hands to BLAS go to numpy's BLAS, so logits
agree to float32 rounding, not bit for bit.
"""

import numpy as np

F32 = np.float32


def activation(name, x):
    """ps_nn_act_forward: tanh, relu (NaN and -0 become +0) or identity."""
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.where(x > 0, x, F32(0)).astype(F32, copy=False)
    if name == "identity":
        return x
    raise ValueError(f"unknown activation '{name}'")


class DcnConfig:
    """ps_dcn_config: cross 'full' or 'moe'; experts, rank, activation and
    use_c apply to moe; deep is the list of tower widths."""

    def __init__(self, input_dim, cross_layers=3, cross="full", experts=1, rank=1,
                 activation="tanh", use_c=True, deep=(400, 400), structure="stacked"):
        self.input_dim = input_dim
        self.cross_layers = cross_layers
        self.cross = cross
        self.experts = experts if cross == "moe" else 1
        self.rank = rank if cross == "moe" else 1
        self.activation = activation
        self.use_c = use_c
        self.deep = list(deep)
        self.structure = structure

    @classmethod
    def from_model(cls, model_cfg, input_dim):
        """The network ps_model_new builds for a [model] section."""
        m = model_cfg
        return cls(input_dim,
                   cross_layers=0 if m.type == "can" else m.cross_layers,
                   cross="moe" if m.cross_rank else "full",
                   experts=m.cross_experts if m.cross_rank else 1,
                   rank=m.cross_rank if m.cross_rank else 1,
                   activation=m.cross_activation, use_c=m.cross_use_c,
                   deep=m.mlp, structure=m.structure)

    def blocks(self):
        """[(name, shape)] of every parameter block, in registration order."""
        N, K, R = self.input_dim, self.experts, self.rank
        out = []
        for l in range(self.cross_layers):
            if self.cross == "full":
                out.append((f"cross.{l}.W", (N, N)))
            else:
                out.append((f"cross.{l}.U", (K, N, R)))
                out.append((f"cross.{l}.V", (K, R, N)))
                if self.use_c:
                    out.append((f"cross.{l}.C", (K, R, R)))
                if K > 1:
                    out.append((f"cross.{l}.G", (K, N)))
            out.append((f"cross.{l}.b", (N,)))
        prev = N
        for j, w in enumerate(self.deep):
            out.append((f"deep.{j}.W", (w, prev)))
            out.append((f"deep.{j}.b", (w,)))
            prev = w
        F = prev + (N if self.structure == "parallel" else 0)
        out.append(("w_out", (F,)))
        out.append(("b_out", (1,)))
        return out


def _moe(cfg, p, l, x):
    """u = sum_k pi_k U_k g(C_k g(V_k x)) (without b), as moe_forward."""
    B = x.shape[0]
    K, R = cfg.experts, cfg.rank
    g = cfg.activation
    V = p[f"cross.{l}.V"].reshape(K * R, -1)
    pv = x @ V.T                                   # B x K r
    if cfg.use_c:
        q = activation(g, pv)
        C = p[f"cross.{l}.C"]
        h = np.empty_like(pv)
        for k in range(K):
            h[:, k * R:(k + 1) * R] = q[:, k * R:(k + 1) * R] @ C[k].T
    else:
        h = pv.copy()
    h = activation(g, h)
    if K > 1:
        a = x @ p[f"cross.{l}.G"].T                # B x K
        mx = a.max(axis=1, keepdims=True)
        e = np.exp(a - mx).astype(F32, copy=False)
        s = np.zeros(B, F32)
        for k in range(K):                         # softmax_rows sums in order
            s = s + e[:, k]
        pi = e * (F32(1) / s)[:, None]
        hs = h * np.repeat(pi, R, axis=1)
    else:
        hs = h
    U = p[f"cross.{l}.U"]
    u = hs[:, 0:R] @ U[0].T
    for k in range(1, K):
        u = u + hs[:, k * R:(k + 1) * R] @ U[k].T
    return u


def dcn_forward(cfg, params, x0):
    """Logits (float32, one per row of x0 [B x N]) of ps_dcn_forward.
    params: name -> float32 array (any shape with the right size)."""
    N = cfg.input_dim
    x0 = np.ascontiguousarray(x0, dtype=F32)
    if x0.ndim != 2 or x0.shape[1] != N:
        raise ValueError(f"x0 must be B x {N}, got {x0.shape}")
    p = {}
    for name, shape in cfg.blocks():
        if name not in params:
            raise KeyError(f"dense block '{name}' missing")
        a = np.asarray(params[name], dtype=F32)
        if a.size != int(np.prod(shape)):
            raise ValueError(f"dense block '{name}' has {a.size} values, the model needs {shape}")
        p[name] = a.reshape(shape)
    x = x0
    for l in range(cfg.cross_layers):
        if cfg.cross == "full":
            u = x @ p[f"cross.{l}.W"].T
        else:
            u = _moe(cfg, p, l, x)
        u = u + p[f"cross.{l}.b"]
        x = x0 * u + x
    deep = x0 if cfg.structure == "parallel" else x
    for j in range(len(cfg.deep)):
        deep = deep @ p[f"deep.{j}.W"].T + p[f"deep.{j}.b"]
        deep = activation("relu", deep)
    w = p["w_out"]
    z = np.full(x0.shape[0], p["b_out"][0], F32)
    if cfg.structure == "parallel":
        z = x @ w[:N] + z
        w = w[N:]
    return (deep @ w + z).astype(F32, copy=False)


class CanConfig:
    """ps_can_config: dims d0..dK, use_bias, orders C, order_indep, layers
    'all' | 'last', combine 'concat' | 'sum'."""

    def __init__(self, dims=(16, 8, 4), use_bias=True, orders=3, order_indep=False,
                 layers="all", combine="concat"):
        self.dims = list(dims)
        self.use_bias = use_bias
        self.orders = orders
        self.order_indep = order_indep
        self.layers = layers
        self.combine = combine

    @classmethod
    def from_model(cls, m):
        return cls(m.can_dims, m.can_bias, m.can_orders, m.can_order_indep, m.can_layers,
                   m.can_combine)

    @property
    def unit_width(self):
        d = self.dims
        return sum(d[k - 1] * d[k] + (d[k] if self.use_bias else 0) for k in range(1, len(d)))

    @property
    def ind_width(self):
        return self.unit_width * (self.orders if self.order_indep else 1)

    @property
    def order_width(self):
        return sum(self.dims[1:]) if self.layers == "all" else self.dims[-1]

    @property
    def out_width(self):
        return self.order_width * (self.orders if self.combine == "concat" else 1)


def can_forward(cfg, P, X, mask=None):
    """Output [B x out_width] of ps_can_forward: P [B x ind_width] the
    induction rows, X [B x T x d0] the feed rows, mask [B x T] (0 =
    padding, never read)."""
    d = cfg.dims
    K, C = len(d) - 1, cfg.orders
    P = np.asarray(P, dtype=F32)
    X = np.asarray(X, dtype=F32)
    B, T = X.shape[0], X.shape[1]
    if P.shape != (B, cfg.ind_width) or X.shape[2] != d[0]:
        raise ValueError(f"P must be {B} x {cfg.ind_width} and X {B} x T x {d[0]}")
    mask = np.ones((B, T), F32) if mask is None else np.asarray(mask, dtype=F32).reshape(B, T)
    live = mask != 0
    Xc = np.where(live[:, :, None], X, F32(0))     # padding may hold anything
    out = np.zeros((B, cfg.out_width), F32)
    for c in range(C):
        base = c * cfg.unit_width if cfg.order_indep else 0
        pw = np.ones_like(Xc)
        for _ in range(c):                         # power(): ((1 * x) * x) ...
            pw = pw * Xc
        h = pw * Xc
        off = base
        oo = c * cfg.order_width if cfg.combine == "concat" else 0
        for k in range(1, K + 1):
            din, dk = d[k - 1], d[k]
            W = P[:, off:off + din * dk].reshape(B, din, dk)
            off += din * dk
            if cfg.use_bias:
                y = np.broadcast_to(P[:, None, off:off + dk], (B, T, dk)).copy()
                off += dk
            else:
                y = np.zeros((B, T, dk), F32)
            for i in range(din):                   # y[j] += h[i] * W[i][j], i in order
                y += h[:, :, i:i + 1] * W[:, None, i, :]
            if k < K:
                y = np.tanh(y)
            if cfg.layers == "all" or k == K:
                o = out[:, oo:oo + dk]
                for t in range(T):
                    o += np.where(live[:, t:t + 1], mask[:, t:t + 1] * y[:, t, :], F32(0))
                oo += dk
            h = y
    return out
