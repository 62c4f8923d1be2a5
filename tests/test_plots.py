"""lora_edu.plots: each function returns a figure holding the artists its docstring promises."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import sympy  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from mpl_toolkits.mplot3d import proj3d  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Line3DCollection, Poly3DCollection  # noqa: E402

from lora_edu import plots  # noqa: E402

A1 = [[1, 2, 3], [2, 4, 6], [3, 6, 9]]
A2 = [[1, 0, 1], [0, 1, 1], [1, 1, 2]]
A3 = [[1, 2, 3], [4, 5, 6], [7, 8, 10]]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def third_column(t):
    a1, a2 = np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])
    return np.column_stack([a1, a2, a1 + a2 + (1 - t) * np.cross(a1, a2)])


def arrows(ax) -> int:
    return sum(isinstance(c, Line3DCollection) for c in ax.collections)


def surfaces(ax) -> int:
    return sum(isinstance(c, Poly3DCollection) for c in ax.collections)


def test_column_space_figure_draws_a_line_a_plane_and_a_box():
    fig = plots.column_space_figure({"A1": A1, "A2": A2, "A3": A3})
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    line, plane, box = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["A1: rank 1, a line", "A2: rank 2, a plane",
                                                   "A3: rank 3, all of space"]
    assert all(arrows(ax) == 3 for ax in fig.axes)  # one quiver arrow per column
    # no surface; one plane; six faces and the plane of a1, a2 (with a3's gap to it dashed)
    assert (surfaces(line), surfaces(plane), surfaces(box)) == (0, 1, 7)
    assert len(line.lines) == 1  # the grey line of the span
    assert [t.get_text() for t in plane.texts] == ["$a_1$", "$a_2$", "$a_3$"]
    (gap,) = box.lines
    ends = np.array(gap.get_data_3d()).T
    assert np.allclose(ends[0], np.array(A3)[:, 2])  # from a3 to its foot in the plane
    n = np.cross(np.array(A3)[:, 0], np.array(A3)[:, 1])
    assert np.linalg.norm(ends[0] - ends[1]) == pytest.approx(abs(np.array(A3)[:, 2] @ n) / np.linalg.norm(n))  # 0.41


def _screen(ax, point) -> np.ndarray:
    x, y, _ = proj3d.proj_transform(*np.asarray(point, dtype=float), ax.get_proj())
    return np.asarray(ax.transData.transform((x, y)))


def _to_segment(p, a, b) -> float:
    d = b - a
    k = np.clip((p - a) @ d / (d @ d), 0, 1)
    return float(np.linalg.norm(p - a - k * d))


@pytest.mark.parametrize("A", [A1, A2, A3])
def test_column_labels_sit_beside_the_other_arrows(A):
    """The labels sat at 1.08 × each tip: on the next arrow for A1's parallel columns (0 px away) and A3's
    near-parallel ones (2.5 px)."""
    fig = plots.column_space_figure({"A": A})
    fig.canvas.draw()
    (ax,) = fig.axes
    A = np.array(A, dtype=float)
    origin, tips = _screen(ax, np.zeros(3)), [_screen(ax, A[:, j]) for j in range(3)]
    for j, text in enumerate(ax.texts):
        label = _screen(ax, [*text.get_position(), text._z])
        for k in range(3):
            if k != j:
                assert _to_segment(label, origin, tips[k]) > 8, (text.get_text(), k)


def test_draw_column_space_plane_contains_the_columns():
    fig = plt.figure()
    ax = plots.draw_column_space(fig.add_subplot(projection="3d"), A2, "A2")
    (surface,) = [c for c in ax.collections if isinstance(c, Poly3DCollection)]
    corners = np.asarray(surface._faces)[0]  # the plane's corner points (matplotlib >= 3.8 keeps them here)
    normal = np.cross(corners[1] - corners[0], corners[2] - corners[0])
    for column in np.array(A2, dtype=float).T:  # every column lies in the drawn plane (through the origin)
        assert abs(column @ normal) < 1e-9 * np.linalg.norm(normal) * np.linalg.norm(column)


@pytest.mark.parametrize("bad", [np.ones((2, 2)), np.ones(3), np.ones((3, 4))])
def test_draw_column_space_rejects_what_it_cannot_draw(bad):
    fig = plt.figure()
    with pytest.raises(ValueError, match="A "):
        plots.draw_column_space(fig.add_subplot(projection="3d"), bad)
    with pytest.raises(ValueError, match="empty"):
        plots.column_space_figure({})


def segments_and_dots(ax):
    segments = [line for line in ax.lines if len(line.get_xdata()) == 2]
    filled = [line for line in ax.lines if len(line.get_xdata()) == 1 and line.get_markerfacecolor() != "white"]
    hollow = [line for line in ax.lines if len(line.get_xdata()) == 1 and line.get_markerfacecolor() == "white"]
    return segments, filled, hollow


def test_rank_steps_drop_exactly_where_the_value_changes():
    """The slider figure used drawstyle="steps-pre", which drew the drop at t = 0.99 (a rank-2 segment on
    (0.99, 1]) although the rank is 3 there."""
    fig, ax = plt.subplots()
    ts = np.linspace(0, 1, 101)
    plots.draw_rank_steps(ax, ts, [3] * 100 + [2])
    segments, filled, hollow = segments_and_dots(ax)
    assert len(segments) == 1 and list(segments[0].get_xdata()) == [0.0, 1.0]
    assert list(segments[0].get_ydata()) == [3, 3]  # rank 3 all the way up to t = 1 ...
    assert [(d.get_xdata()[0], d.get_ydata()[0]) for d in hollow] == [(1.0, 3)]  # ... not attained at t = 1 ...
    assert [(d.get_xdata()[0], d.get_ydata()[0]) for d in filled] == [(1.0, 2)]  # ... where the rank is 2
    assert not any(line.get_drawstyle().startswith("steps") for line in ax.lines)


def test_rank_steps_with_a_jump_inside_and_errors():
    fig, ax = plt.subplots()
    plots.draw_rank_steps(ax, [0, 1, 2, 3], [1, 1, 2, 2])
    segments, filled, hollow = segments_and_dots(ax)
    assert [list(s.get_xdata()) for s in segments] == [[0, 2], [2, 3]]
    assert [d.get_xdata()[0] for d in filled] == [2] and [d.get_xdata()[0] for d in hollow] == [2]
    with pytest.raises(ValueError, match="increasing"):
        plots.draw_rank_steps(ax, [0, 0], [1, 1])
    with pytest.raises(ValueError, match="same non-zero length"):
        plots.draw_rank_steps(ax, [0, 1], [1])


def test_slider_figure():
    fig = plots.slider_figure(third_column, 0.5)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    space, volume, count = fig.axes
    assert space.get_title() == "t = 0.50: rank 3, gap 0.87"  # gap (1 - t)·|n| = 0.5·√3
    assert arrows(space) == 3 and surfaces(space) == 7  # the box and the plane of a1, a2 (draw_column_space)
    (gap,) = space.lines
    ends = np.array(gap.get_data_3d()).T
    assert np.allclose(ends[0], third_column(0.5)[:, 2]) and np.linalg.norm(ends[0] - ends[1]) == pytest.approx(0.5 * np.sqrt(3))
    labels = [text.get_text() for text in space.texts]
    assert labels == ["$a_1$", "$a_2$", "$a_3$"]  # placed together, so a2's label avoids a3's arrow
    # |det| and the rank on their own y-axes: on one axis both started at (0, 3), because |det M(0)| = |n|² = 3
    assert (volume.get_ylabel(), count.get_ylabel()) == ("|det M(t)|", "rank M(t)")
    assert [h.get_label() for h in volume.get_legend().legend_handles] == ["|det M(t)|, the box volume", "t = 0.50"]
    assert [h.get_label() for h in count.get_legend().legend_handles] == ["rank M(t)", "t = 0.50"]
    det_line = volume.lines[0]
    assert np.allclose(det_line.get_ydata(), 3 * (1 - det_line.get_xdata()))  # |det M(t)| = 3 (1 - t)
    _, filled, hollow = segments_and_dots(count)
    assert [(d.get_xdata()[0], d.get_ydata()[0]) for d in filled] == [(1.0, 2)]
    assert [(d.get_xdata()[0], d.get_ydata()[0]) for d in hollow] == [(1.0, 3)]
    at_one = plots.slider_figure(third_column, 1.0).axes[0]
    assert at_one.get_title() == "t = 1.00: rank 2, gap 0.00" and surfaces(at_one) == 1 and not at_one.lines
    with pytest.raises(ValueError, match="3×3"):
        plots.slider_figure(lambda t: np.ones((3, 2)))


def test_unit_circle_figure_semi_axes_are_the_singular_values():
    A = np.array([[1.0, 1.0], [0.0, 1.0]])
    fig = plots.unit_circle_figure({"A": A, "flat": [[1, 2], [0.5, 1]]})
    assert len(fig.axes) == 2
    ax, flat = fig.axes
    image = np.column_stack([ax.lines[1].get_xdata(), ax.lines[1].get_ydata()])
    lengths = np.linalg.norm(image, axis=1)
    S = np.linalg.svd(A, compute_uv=False)
    assert lengths.max() == pytest.approx(S[0], rel=1e-3) and lengths.min() == pytest.approx(S[1], rel=1e-3)
    assert [a.xy for a in ax.texts] and len(ax.texts) == 2  # two arrows: σ1 u1 and σ2 u2
    assert np.linalg.norm(ax.texts[0].xy) == pytest.approx(S[0])
    assert flat.get_title() == "flat: rank 1" and len(flat.texts) == 1  # σ2 = 0: no second arrow
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["unit circle", "its image", f"σ1 = {S[0]:.2f}", f"σ2 = {S[1]:.2f}"]
    with pytest.raises(ValueError, match="2×2"):
        plots.unit_circle_figure({"B": np.ones((3, 3))})


def test_outer_product_figure_panels_add_up():
    C = sympy.Matrix([[1, 0], [2, 1], [3, 1]])
    R = sympy.Matrix([[1, 2, 0, 1], [0, 0, 1, 1]])
    fig = plots.outer_product_figure(C, R)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["$c_1 r_1^T$", "$c_2 r_2^T$", "sum $= M$"]

    def entries(ax):
        numbers = [t for t in ax.texts if t.get_text() not in "+="]
        return np.array([int(t.get_text()) for t in numbers]).reshape(3, 4)

    assert np.array_equal(entries(fig.axes[0]) + entries(fig.axes[1]), entries(fig.axes[2]))
    assert np.array_equal(entries(fig.axes[2]), np.array((C * R).tolist(), dtype=int))
    with pytest.raises(ValueError, match="must fit"):
        plots.outer_product_figure(np.ones((3, 2)), np.ones((3, 4)))


def test_draw_entries_labels_columns_from_one_and_frames_pivots():
    fig, ax = plt.subplots()
    plots.draw_entries(ax, [[0, 2, sympy.Rational(1, 2)], [0, 0, 3]], pivots=(1, 2), title="E")
    assert [t.get_text() for t in ax.texts] == ["0", "2", "1/2", "0", "0", "3"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    frames = [p for p in ax.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert [f.get_xy() for f in frames] == [(0.5, -0.5), (1.5, 0.5)]
