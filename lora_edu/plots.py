"""Figures for chapters 01 and 02, so that a notebook cell shows one call instead of forty lines of matplotlib.

Each function draws one kind of picture and returns the matplotlib ``Figure`` (or the ``Axes`` it drew on);
the notebook calls ``plt.show()``. Nothing here computes a result the chapters rely on: ranks come from
:mod:`lora_edu.rank`, singular values from NumPy.

- :func:`draw_column_space` / :func:`column_space_figure` — the columns of a 3×3 matrix as arrows and the
  line, plane or box they span;
- :func:`slider_figure` — a third column gliding into the plane of the first two, with ``|det|`` and the
  rank as functions of the knob ``t``; :func:`draw_rank_steps` draws a whole-number curve with its jumps;
- :func:`unit_circle_figure` — a 2×2 matrix maps the unit circle to an ellipse whose semi-axes are the
  singular values;
- :func:`outer_product_figure` — ``M = C R`` as a sum of rank-one layers ``c_i r_iᵀ``;
- :func:`draw_entries` — a small matrix as a grid of numbers, non-zeros shaded, pivots framed.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import sympy
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lora_edu.rank import format_matrix, numeric_rank, row_echelon

__all__ = ["COLORS", "draw_column_space", "column_space_figure", "draw_rank_steps", "slider_figure",
           "unit_circle_figure", "outer_product_figure", "draw_entries"]

#: One color per column: a₁, a₂, a₃.
COLORS = ("tab:blue", "tab:orange", "tab:red")
_SPAN_WORDS = {0: "the origin", 1: "a line", 2: "a plane", 3: "all of space"}


def _columns3(A: Any, name: str = "A") -> np.ndarray:
    arr = np.asarray(A, dtype=float)
    if arr.ndim != 2 or arr.shape[0] != 3:
        raise ValueError(f"{name} must be a matrix with 3 rows (columns are arrows in 3-D space), "
                         f"got shape {arr.shape}.")
    return arr


def _label_arrows(ax: Any, A: np.ndarray, L: float, names: Sequence[str], colors: Sequence[str]) -> None:
    """Label each column of ``A`` (an arrow from the origin) beside its tip, on the side — across the arrow as seen
    from the current view — that is farther from the other arrows and the labels already placed, so that labels
    of (nearly) parallel arrows sit neither on each other nor on an arrow. Set the view (``ax.view_init``) first."""
    elev, azim = np.radians(ax.elev), np.radians(ax.azim)
    toward_viewer = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])

    def on_screen(p: np.ndarray) -> np.ndarray:  # drop the component along the line of sight
        return p - (p @ toward_viewer) * toward_viewer

    def to_segment(p: np.ndarray, tip: np.ndarray) -> float:  # screen distance from p to the arrow 0 -> tip
        p, tip = on_screen(p), on_screen(tip)
        k = float(np.clip(p @ tip / max(float(tip @ tip), 1e-300), 0.0, 1.0))
        return float(np.linalg.norm(p - k * tip))

    placed: list[np.ndarray] = []
    for j, (name, color) in enumerate(zip(names, colors)):
        tip = A[:, j]
        side = np.cross(tip, toward_viewer)  # across the arrow on the screen
        if np.linalg.norm(side) < 1e-9 * max(1.0, float(np.linalg.norm(tip))):
            side = np.cross([1.0, 0.0, 0.0], toward_viewer)
        side = side / np.linalg.norm(side)
        candidates = [tip + 0.13 * L * sign * side for sign in (1, -1)]
        others = [A[:, k] for k in range(A.shape[1]) if k != j]

        def clearance(p: np.ndarray) -> float:
            gaps = [to_segment(p, other) for other in others]
            gaps += [float(np.linalg.norm(on_screen(p - q))) for q in placed]
            return min(gaps, default=np.inf)

        best = max(candidates, key=clearance)
        placed.append(best)
        ax.text(*best, name, color=color, ha="center", va="center")


def draw_column_space(ax: Any, A: Any, title: str = "", half_width: float | None = None) -> Any:
    """Draw the columns of ``A`` (shape ``(3, n)``, ``n <= 3``) as arrows from the origin on the 3-D axes ``ax``,
    and shade their span: a grey line (rank 1), a grey plane (rank 2) or the faces of the box (rank 3).
    For rank 3 the plane of the first two pivot columns is drawn too, with the third column's gap to it dashed:
    how far the columns are from lying in one plane.

    The span is found from the pivot columns of ``A`` (exact elimination), made orthonormal with a QR
    factorization. ``half_width`` is the half-size of the drawn box (default: 1.1 × the largest entry).
    Returns ``ax``.
    """
    A = _columns3(A)
    if A.shape[1] > len(COLORS):
        raise ValueError(f"A has {A.shape[1]} columns; draw_column_space colors at most {len(COLORS)}.")
    L = float(half_width) if half_width is not None else 1.1 * float(np.abs(A).max() or 1.0)
    pivots = list(row_echelon(A).pivots)  # indices of independent columns
    s, t = np.meshgrid([-L, L], [-L, L])
    if len(pivots) == 1:  # a line through the origin
        Q, _ = np.linalg.qr(A[:, pivots])
        ax.plot(*np.outer([-L, L], Q[:, 0]).T, color="gray", lw=4, alpha=0.5)
    elif len(pivots) == 2:  # a plane through the origin
        Q, _ = np.linalg.qr(A[:, pivots])
        ax.plot_surface(*(Q[:, :1, None] * s + Q[:, 1:, None] * t), color="gray", alpha=0.25)
    elif len(pivots) == 3:  # everything: shade the six faces of the box ...
        for k in range(3):
            for side in (-L, L):
                ax.plot_surface(*np.roll([s, t, np.full_like(s, side)], k, axis=0), color="gray", alpha=0.05)
        Q, _ = np.linalg.qr(A[:, pivots[:2]])  # ... and the plane of the first two, with the third's gap to it
        ax.plot_surface(*(Q[:, :1, None] * s + Q[:, 1:, None] * t), color="gray", alpha=0.25)
        third = A[:, pivots[2]]
        ax.plot(*np.column_stack([third, Q @ (Q.T @ third)]), "k--", lw=1.5)
    for j in range(A.shape[1]):
        ax.quiver(0, 0, 0, *A[:, j], color=COLORS[j], lw=2, arrow_length_ratio=0.12)
    _label_arrows(ax, A, L, [f"$a_{j + 1}$" for j in range(A.shape[1])], COLORS)
    ax.set(xlim=(-L, L), ylim=(-L, L), zlim=(-L, L), xlabel="x", ylabel="y", zlabel="z", title=title)
    ax.set_box_aspect(None, zoom=0.85)
    return ax


def column_space_figure(matrices: Mapping[str, Any]) -> Figure:
    """One 3-D panel per ``name: matrix`` (each ``(3, n)``): the columns and their span, titled with the
    exact rank and what the span is ("a line", "a plane", "all of space")."""
    if not matrices:
        raise ValueError("matrices is empty: pass a dict such as {'A1': A1}.")
    fig = plt.figure(figsize=(3.4 * len(matrices), 3.8))
    for k, (name, A) in enumerate(matrices.items()):
        ax = fig.add_subplot(1, len(matrices), k + 1, projection="3d")
        rank = len(row_echelon(_columns3(A, name)).pivots)
        draw_column_space(ax, A, f"{name}: rank {rank}, {_SPAN_WORDS[rank]}")
    fig.tight_layout()
    return fig


def draw_rank_steps(ax: Axes, ts: Sequence[float], values: Sequence[int], color: str = "tab:orange",
                    label: str | None = None) -> Axes:
    """Draw a whole-number function sampled at increasing ``ts`` as flat segments, honestly at the jumps.

    A value holds from its sample up to the next sample where the value changes (as ``drawstyle="steps-post"``).
    At a jump, an open circle ○ ends the old value (not attained there) and a filled dot ● starts the new one;
    a value seen only at the last sample is a single dot. No vertical segment is drawn: the function takes
    no value in between. Returns ``ax``.
    """
    ts, values = np.asarray(ts, dtype=float), np.asarray(values)
    if ts.shape != values.shape or ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"ts and values must be 1-D of the same non-zero length, got {ts.shape} and {values.shape}.")
    if np.any(np.diff(ts) <= 0):
        raise ValueError("ts must be strictly increasing.")
    starts = [0] + [i for i in range(1, ts.size) if values[i] != values[i - 1]]
    ends = starts[1:] + [ts.size - 1]  # a run holds up to the next run's first sample (or the last sample)
    for k, (i, j) in enumerate(zip(starts, ends)):
        last = k == len(starts) - 1
        if i != j or not last:
            ax.plot([ts[i], ts[j]], [values[i], values[i]], color=color, lw=2, label=label if k == 0 else None)
        if k > 0 or (last and i == j):
            ax.plot([ts[i]], [values[i]], "o", color=color, ms=7)  # the value at the jump
        if not last:
            ax.plot([ts[j]], [values[i]], "o", mfc="white", mec=color, ms=7)  # not attained at the jump
    return ax


def slider_figure(matrix_of_t: Callable[[float], Any], t: float = 0.5, ts: Sequence[float] | None = None) -> Figure:
    """The slider picture of chapter 01 for ``M(t) = matrix_of_t(t)`` (shape ``(3, 3)``).

    Left: :func:`draw_column_space` of M — the plane of its first two columns and, while the third is outside it,
    that column's gap to the plane dashed (the title gives the rank and the gap). Right, in two panels with their own y-axes (a volume and a count
    are different quantities): ``|det M(s)|`` on top and ``rank M(s)`` (:func:`numeric_rank`, drawn with
    :func:`draw_rank_steps`) below, for ``s`` in ``ts`` (default 101 points from 0 to 1), each with a dotted
    line at ``t``.
    """
    M = _columns3(matrix_of_t(t), "matrix_of_t(t)")
    if M.shape != (3, 3):
        raise ValueError(f"matrix_of_t(t) must be 3×3, got shape {M.shape}.")
    ts = np.linspace(0.0, 1.0, 101) if ts is None else np.asarray(ts, dtype=float)
    Q, _ = np.linalg.qr(M[:, :2])
    foot = Q @ (Q.T @ M[:, 2])  # the point of the plane closest to the third column
    gap = float(np.linalg.norm(M[:, 2] - foot))
    fig = plt.figure(figsize=(10, 4.4))
    grid = fig.add_gridspec(2, 2, width_ratios=[1.2, 1])
    ax = fig.add_subplot(grid[:, 0], projection="3d")
    ax.view_init(elev=20, azim=-40)  # before drawing: the labels are placed for this view
    # rank 3: the box, the plane of a1, a2 and the gap of a3 dashed; rank 2: the plane, with a3 in it
    draw_column_space(ax, M, f"t = {t:.2f}: rank {numeric_rank(M)}, gap {gap:.2f}",
                      half_width=1.1 * float(np.abs(M).max()))
    ax.set_box_aspect(None, zoom=1.05)
    volume = fig.add_subplot(grid[0, 1])
    dets = [abs(np.linalg.det(np.asarray(matrix_of_t(s), dtype=float))) for s in ts]
    volume.plot(ts, dets, label="|det M(t)|, the box volume")
    volume.set(ylabel="|det M(t)|", ylim=(-0.05 * max(dets), 1.1 * max(dets)), title="|det| shrinks smoothly ...")
    count = fig.add_subplot(grid[1, 1], sharex=volume)
    draw_rank_steps(count, ts, [numeric_rank(matrix_of_t(s)) for s in ts], label="rank M(t)")
    count.set(xlabel="t", ylabel="rank M(t)", ylim=(-0.2, 3.4), yticks=range(4), title="... the rank only jumps")
    for panel in (volume, count):
        panel.axvline(t, color=COLORS[2], ls=":", label=f"t = {t:.2f}")
        panel.legend(loc="lower left", fontsize=8)
    volume.tick_params(labelbottom=False)
    fig.tight_layout()
    return fig


def unit_circle_figure(matrices: Mapping[str, Any]) -> Figure:
    """One panel per ``name: matrix`` (each ``2×2``): the unit circle (dashed) and its image under the matrix.

    The image is an ellipse whose semi-axes are ``σ₁ u₁`` and ``σ₂ u₂`` (drawn as arrows, from NumPy's SVD):
    the singular values are how far the matrix stretches its most- and least-stretched directions. A zero
    singular value squashes the ellipse flat onto a segment — rank 1 (a singular value below
    :func:`numeric_rank`'s tolerance gets no arrow).
    """
    if not matrices:
        raise ValueError("matrices is empty: pass a dict such as {'A': A}.")
    theta = np.linspace(0, 2 * np.pi, 200)
    circle = np.vstack([np.cos(theta), np.sin(theta)])
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.3 * len(matrices), 3.5), squeeze=False)
    for ax, (name, A) in zip(axes[0], matrices.items()):
        A = np.asarray(A, dtype=float)
        if A.shape != (2, 2):
            raise ValueError(f"{name} must be 2×2, got shape {A.shape}.")
        U, S, _ = np.linalg.svd(A)
        rank = numeric_rank(A)
        ax.plot(*circle, color="gray", ls="--", lw=1, label="unit circle")
        ax.plot(*(A @ circle), color="tab:blue", lw=2, label="its image")
        for k, color in enumerate(("tab:red", "tab:orange")):
            if k < rank:  # a singular value at rounding level (rank 1) gets no arrow
                ax.annotate("", xy=S[k] * U[:, k], xytext=(0, 0),
                            arrowprops=dict(arrowstyle="->", color=color, lw=2))
            ax.plot([], [], color=color, lw=2, label=f"σ{k + 1} = {S[k]:.2f}")
        lim = 1.15 * max(1.0, float(S[0]))
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=f"{name}: rank {rank}")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def outer_product_figure(C: Any, R: Any) -> Figure:
    """``M = C R`` drawn as a sum of rank-one layers: ``M = c₁ r₁ᵀ + c₂ r₂ᵀ + …``.

    ``C`` is ``(m, r)``, ``R`` is ``(r, n)`` (exact numbers such as SymPy matrices are fine). One panel per
    term ``c_i r_iᵀ`` and one for their sum, each a grid of its entries.
    """
    C, R = (np.array(sympy.Matrix(X).tolist(), dtype=object) for X in (C, R))
    if C.ndim != 2 or R.ndim != 2 or C.shape[1] != R.shape[0]:
        raise ValueError(f"C (m, r) and R (r, n) must fit: got shapes {C.shape} and {R.shape}.")
    terms = [np.outer(C[:, i], R[i, :]) for i in range(C.shape[1])]
    panels = terms + [sum(terms[1:], terms[0])]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels) + 0.6, 2.4), squeeze=False)
    for i, (ax, P) in enumerate(zip(axes[0], panels)):
        name = f"$c_{i + 1} r_{i + 1}^T$" if i < len(terms) else "sum $= M$"
        draw_entries(ax, P, title=name)
        ax.set(xlabel="", ylabel="")
        if i < len(panels) - 1:
            ax.text(1.08, 0.5, "=" if i == len(panels) - 2 else "+", transform=ax.transAxes, fontsize=16,
                    ha="center", va="center")
    fig.tight_layout()
    return fig


def draw_entries(ax: Axes, E: Any, pivots: Sequence[int] = (), title: str = "") -> Axes:
    """Draw the small matrix ``E`` (shape ``(m, n)``) as a grid of its entries (exact fractions), non-zero cells
    shaded, and a red frame on the pivot of row ``i`` at column index ``pivots[i]``. Columns are labelled from 1,
    as in the chapters' prose. Returns ``ax``."""
    rows = [line.strip("[] ").split() for line in format_matrix(E).splitlines()]
    m, n = len(rows), len(rows[0])
    ax.imshow(np.array([[x != "0" for x in row] for row in rows]), cmap="Blues", vmin=0, vmax=2)
    for i, j in np.ndindex(m, n):
        ax.text(j, i, rows[i][j], ha="center", va="center", fontsize=10)
    for i, c in enumerate(pivots):
        ax.add_patch(Rectangle((c - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
    ax.set(title=title, xlabel="column", xticks=range(n), xticklabels=[str(j + 1) for j in range(n)],
           yticks=range(m), yticklabels=[str(i + 1) for i in range(m)])
    ax.grid(False)
    return ax
