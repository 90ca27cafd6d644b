"""The kernels a planned site needs, per op: builders of its ``KernelSpec``s, which the
registry entries name (``fffc.contract.modes``: ``Mode.specs``, ``kernel_specs(site)``)."""

from __future__ import annotations

from .kinds import SiteKind, SparseMode
from .ops import (
    KernelSpec,
    combine_kernel_spec,
    fff_kernel_spec,
    route_kernel_spec,
    structured_kernel_spec,
)


def merged_spec(site) -> KernelSpec:
    """A structured site's pre-merged dense path (and the dense FFN a RoutedFFN runs on its
    gathered tokens): the structured op with k = 1 and no U."""
    return structured_kernel_spec(site.activation, site.d_model, site.d_ff, site.d_out, k1=1,
                                  r1=site.d_ff, u1=False, k2=1, r2=site.d_out, u2=False,
                                  has_b1=site.has_b1, has_b2=site.has_b2)


def sparse_specs(site, m) -> list[KernelSpec]:
    """SparseFFN's one kernel for mode entry ``m``: the predictor's rank and a centered teal
    site's centers are part of the spec (they change the kernel's inputs)."""
    rank = ((("rank", str(site.predictor["rank"])),) if m.sparse_mode is SparseMode.PREDICTOR
            else ())
    return [KernelSpec(
        op=m.op.name, activation=site.activation, up_activation=site.up_activation,
        mode=str(m.sparse_mode), d_in=site.d_model, d_ff=site.d_ff, d_out=site.d_out,
        # a centered teal site's biases hold its centers' share
        has_b1=site.has_b1 or "x" in site.centered, has_b2=site.has_b2 or "h" in site.centered,
        gated=site.kind is SiteKind.GATED, dtype=site.dtype,
        extra=rank or ((("centers", site.centered),) if site.centered else ()),
    )]


def fff_specs(site, m) -> list[KernelSpec]:
    return [fff_kernel_spec(site.d_model, site.d_out, site.trees, site.depth,
                            site.tie_break or "gt")]


def structured_specs(site, m) -> list[KernelSpec]:
    st = site.structure or {}
    return [structured_kernel_spec(
        site.activation, site.d_model, site.d_ff, site.d_out, k1=st["k1"], r1=st["r1"],
        u1=st["u1"], k2=st["k2"], r2=st["r2"], u2=st["u2"], has_b1=site.has_b1,
        has_b2=site.has_b2, m1=st.get("m1", 0), s1=st.get("s1", 0), m2=st.get("m2", 0),
        s2=st.get("s2", 0))]


def routed_specs(site, m) -> list[KernelSpec]:
    r = site.routing or {}
    k = None if r.get("capacity") else r["k"]
    return [route_kernel_spec(site.d_model, r.get("selection", "topk"), k, r["router"],
                              r.get("router_bias", False), r.get("selection_score", False),
                              r.get("selection_bias", False), r.get("layer_norm_epsilon")),
            merged_spec(site), combine_kernel_spec(site.d_model)]


def routed_counted(site, m) -> list[KernelSpec]:
    """The dense FFN a RoutedFFN runs on its gathered rows: on CUDA its kernels read the
    selected count on the device ("counted" variants)."""
    return [merged_spec(site)]
