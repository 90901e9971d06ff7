r"""The interactive playground of the book: sliders over a precomputed grid, and static scrubbers.

    pg = dsmlib.widgets.playground()        # display it (a Jupyter cell's last expression)
    pg.select(lr=0.05, t=0.02)              # move sliders from code (grid values only)
    pg.train(lr=0.3, t=0.05, n=10, width=1000, seed=0)   # a setting off the grid, trained now
    dsmlib.widgets.scrubber(over="lr", t=0.05, n=10, width=1000, seed=0)   # no kernel needed

Every redraw reads one :class:`dsmlib.playground.View` from the grid file and updates the
artists of one matplotlib figure in place (``set_data``), then renders it into an
``ipywidgets.Image``: no re-training, no new figure, no flicker, and the executed notebook stores
the picture in its widget state, so the static book shows it without a kernel. The same figure
class renders the frames of :func:`scrubber` (matplotlib's ``to_jshtml``), which a reader scrubs
in the static book. Needs ``ipywidgets`` (``pip install dsmlib[widgets]``) for the sliders only.
"""

from __future__ import annotations

import io
import math
import numbers

import numpy as np

from . import playground as _pg

__all__ = ["PlaygroundFigure", "Playground", "playground", "scrubber", "plot_view"]

_SETTING = ("lr", "t", "n", "width", "seed")
_LEARNED = "#d62728"
_OPTIMAL = "black"


def _fmt(x, spec=".3g"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


class PlaygroundFigure:
    r"""The playground's four panels, drawn once and updated in place from a View.

    (a) learned score ``s_theta`` and ``s*`` against ``y``, training points ``mu x_i`` marked;
    (b) Langevin samples of ``p_t`` with each score (histograms); (c) the denoised samples
    ``(y + sigma^2 s(y)) / mu`` (histograms), training points ``x_i`` marked; (d) the numbers.
    ``draw(view)`` updates the artists; ``png()`` renders to PNG bytes (Agg, no pyplot).

    fig: draw into this (empty) figure, e.g. one from ``plt.figure``; default: a new Figure with
    an Agg canvas, outside pyplot (nothing is displayed by accident).
    blit: keep a rendered background of everything that does not depend on the learning rate
    (axes, ticks, legends, ``s*``, the training points) and, while only the learning rate moves,
    redraw just the learned curves and the numbers on top of it. ``savefig`` of a blitting figure
    would omit those artists: use ``png()``, or ``blit=False`` (as :func:`scrubber` does).
    """

    def __init__(self, *, figsize=(9.2, 7.6), dpi=80, blit=False, fig=None):
        from matplotlib.ticker import MaxNLocator

        if fig is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = Figure(figsize=figsize, dpi=dpi)
            FigureCanvasAgg(fig)
        self.fig = fig
        gs = self.fig.add_gridspec(2, 2, left=0.075, right=0.975, bottom=0.07, top=0.905,
                                   wspace=0.22, hspace=0.36)
        ax_s, ax_p = self.fig.add_subplot(gs[0, 0]), self.fig.add_subplot(gs[0, 1])
        ax_d, ax_t = self.fig.add_subplot(gs[1, 0]), self.fig.add_subplot(gs[1, 1])
        self.axes = (ax_s, ax_p, ax_d, ax_t)
        empty = np.zeros(2)
        tick = dict(color="tab:blue", ms=12, mew=1.5, ls="none", marker="|")
        (self.l_opt,) = ax_s.plot(empty, empty, color=_OPTIMAL, lw=1.8,
                                  label=r"$s^*$ (empirical optimum)")
        (self.l_net,) = ax_s.plot(empty, empty, color=_LEARNED, lw=1.6, label=r"learned $s_\theta$")
        (self.tick_s,) = ax_s.plot(empty, empty, label=r"$\mu x_i$", **tick)
        ax_s.axhline(0.0, color="0.8", lw=0.8, zorder=0)
        ax_s.set_xlabel("$y$")
        ax_s.set_ylabel("score")
        ax_s.legend(loc="upper right", fontsize=8.5, framealpha=0.9)
        hist = dict(lw=1.4, fill=True, alpha=0.35, color=_LEARNED)
        self.h_popt = ax_p.stairs(np.zeros(1), [0, 1], color=_OPTIMAL, lw=1.4, label="with $s^*$")
        self.h_pnet = ax_p.stairs(np.zeros(1), [0, 1], label=r"with $s_\theta$", **hist)
        (self.tick_p,) = ax_p.plot(empty, empty, label=r"$\mu x_i$", **tick)
        ax_p.set_xlabel("$y$")
        ax_p.set_ylabel("density")
        ax_p.set_title(r"Langevin samples of $p_t$ (only the score is used)", fontsize=10.5)
        ax_p.legend(loc="upper right", fontsize=8.5, framealpha=0.9)
        self.h_dopt = ax_d.stairs(np.zeros(1), [0, 1], color=_OPTIMAL, lw=1.4, label="with $s^*$")
        self.h_dnet = ax_d.stairs(np.zeros(1), [0, 1], label=r"with $s_\theta$", **hist)
        (self.tick_d,) = ax_d.plot(empty, empty, label="training points $x_i$", **tick)
        ax_d.set_xlabel("$x$")
        ax_d.set_ylabel("density")
        ax_d.set_title(r"denoised samples $\hat x = (y + \sigma^2 s(y))/\mu$", fontsize=10.5)
        ax_d.legend(loc="upper right", fontsize=8.5, framealpha=0.9)
        for ax in (ax_s, ax_p, ax_d):
            ax.yaxis.set_major_locator(MaxNLocator(4))   # fewer labels: a faster full redraw
            ax.tick_params(labelsize=9.5)
            ax.xaxis.label.set_size(10.5)
            ax.yaxis.label.set_size(10.5)
        ax_t.set_axis_off()
        self.t_labels = ax_t.text(-0.03, 1.02, "\n".join(_LABELS), va="top", ha="left",
                                  fontsize=10.5, linespacing=1.6, transform=ax_t.transAxes)
        self.t_values = ax_t.text(1.0, 1.02, "", va="top", ha="right", fontsize=10.5,
                                  linespacing=1.6, transform=ax_t.transAxes)
        self.t_verdict = ax_t.text(-0.03, -0.04, "", va="bottom", ha="left", fontsize=9.5,
                                   linespacing=1.5, transform=ax_t.transAxes, color="0.25")
        self.title = self.fig.suptitle("", fontsize=12)
        self.score_title = ax_s.set_title("", fontsize=10.5)
        # what changes when only the learning rate moves
        self._dynamic = (self.l_net, self.h_pnet, self.h_dnet, self.t_values, self.t_verdict,
                         self.title)
        self.blit = bool(blit)
        for a in self._dynamic:
            a.set_animated(self.blit)
        self._background = None
        self._key = None
        self.view = None

    # ------------------------------------------------------------------ drawing
    def draw(self, view: _pg.View):
        """Update every artist from ``view`` (in place; nothing is created or removed)."""
        ax_s, ax_p, ax_d, _ = self.axes
        y, lim = view.y, float(view.y[-1])
        edges = view.hist_edges
        # the score panel's range: what s* spans over the data (+ 2 sigma), the same for every lr
        inside = (y > view.mu * view.data.min() - 2 * view.sigma) & \
                 (y < view.mu * view.data.max() + 2 * view.sigma)
        top = 1.15 * float(np.max(np.abs(view.optimal[inside])))
        hp = 1.12 * _finite_top(view.noisy_top, view.noisy, view.noisy_opt)
        hd = 1.12 * _finite_top(view.denoised_top, view.denoised, view.denoised_opt)
        key = (view.t, view.n, view.width, view.seed, lim, top, hp, hd, view.source == "grid")
        if key != self._key:
            self._key, self._background = key, None
            self.l_opt.set_data(y, view.optimal)
            self.h_popt.set_data(view.noisy_opt, edges)
            self.h_dopt.set_data(view.denoised_opt, edges)
            for ax in (ax_s, ax_p, ax_d):
                ax.set_xlim(-lim, lim)
            ax_s.set_ylim(-top, top)
            ax_p.set_ylim(0, hp)
            ax_d.set_ylim(0, hd)
            self.tick_s.set_data(view.mu * view.data, np.zeros_like(view.data))
            self.tick_p.set_data(view.mu * view.data, np.full_like(view.data, 0.03 * hp))
            self.tick_d.set_data(view.data, np.full_like(view.data, 0.03 * hd))
            self.score_title.set_text(r"score at $t = %g$: learned vs $s^*$" % view.t)
        self.l_net.set_data(y, view.score)
        self.h_pnet.set_data(np.nan_to_num(view.noisy), edges)
        self.h_dnet.set_data(np.nan_to_num(view.denoised), edges)
        self.title.set_text(
            f"η = {view.lr:g},  t = {view.t:g} (μ = {view.mu:.3f}, σ = {view.sigma:.3f}),  "
            f"n = {view.n},  m = {view.width},  data seed {view.seed}   "
            f"[{view.source.split(' (')[0]}]")   # no timing in the picture: it would change each run
        self.t_values.set_text("\n".join(_values(view)))
        self.t_verdict.set_text(_verdict(view))
        self.view = view

    def rgba(self) -> np.ndarray:
        """Render and return the pixels, (H, W, 4) uint8 (blitting when enabled)."""
        canvas = self.fig.canvas
        if not self.blit:
            canvas.draw()
        elif self._background is None:
            canvas.draw()                                   # everything but the dynamic artists
            self._background = canvas.copy_from_bbox(self.fig.bbox)
            for a in self._dynamic:
                self.fig.draw_artist(a)
        else:
            canvas.restore_region(self._background)
            for a in self._dynamic:
                self.fig.draw_artist(a)
        return np.asarray(canvas.buffer_rgba())

    def png(self) -> bytes:
        """The figure as PNG bytes (fast zlib level; about 100 kB)."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.rgba()[..., :3]).save(buf, format="png", compress_level=1)
        return buf.getvalue()


_LABELS = (
    r"SGD steps ($\eta \cdot$steps)",
    r"excess risk $R_n(s_\theta) - R_n(s^*)$",
    r"sharpness $\lambda_{\max}$ of the Hessian",
    r"stability bound $2/(m\eta)$ (eq. 8)",
    r"Thm. 8 threshold $2^{12}\sigma^2/(\mu n^2 \Delta)$",
    r"memorization fraction, $s_\theta$",
    r"memorization fraction, $s^*$",
    r"units active on the data range",
)


def _values(v):
    dead = "diverged"
    return [
        f"{v.steps} ({v.lr * v.steps:.0f})",
        dead if v.diverged else _fmt(v.excess),
        dead if v.diverged else _fmt(v.sharp),
        _fmt(v.stab),
        _fmt(v.theorem_lr),
        dead if v.diverged else f"{v.memo:.2f}",
        f"{v.memo_opt:.2f}",
        dead if v.diverged else f"{v.active:.0%}",
    ]


def _finite_top(top, *arrays):
    if math.isfinite(top) and top > 0:
        return top
    vals = [float(np.nanmax(a)) for a in arrays if np.isfinite(a).any()]
    return max(vals + [1e-3])


def _times(x) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _verdict(v) -> str:
    """Two or three short lines on what the numbers say."""
    if v.diverged:
        return (f"SGD diverged (m·η = {v.width * v.lr:g}): it never reached\n"
                f"a region with λmax ≤ 2/(mη) = {v.stab:.2g}.")
    lines = []
    if v.active == 0:
        lines.append("Collapsed: every unit is off on the data, so s_θ = 0\n"
                     "there; its excess risk is that of the zero score.")
    elif v.active < 0.5:
        lines.append(f"Partially collapsed: {v.active:.0%} of the units are active\n"
                     "on the data.")
    ratio = v.sharp / v.stab if v.stab > 0 else math.nan
    if ratio <= 1.0:
        lines.append(f"λmax = {max(ratio, 0.0):.2f} × 2/(mη): linearly stable (eq. 8).")
    elif math.isfinite(ratio):
        lines.append(f"λmax = {ratio:.2f} × 2/(mη): not a stable minimum.")
    thr = v.theorem_lr / v.lr
    if thr > 1:
        lines.append(f"η is {_times(thr)}× below Thm. 8's threshold.")
    else:
        lines.append("η is above Thm. 8's threshold: no stable\nminimum can have a small excess risk.")
    return "\n".join(lines)


def plot_view(view, *, dpi=80):
    """Draw one :class:`~dsmlib.playground.View` in a new pyplot figure (show it with
    ``plt.show()``). Returns the Figure."""
    import matplotlib.pyplot as plt

    figure = PlaygroundFigure(fig=plt.figure(figsize=(9.2, 7.6), dpi=dpi))
    figure.draw(view)
    return figure.fig


# ---------------------------------------------------------------------------------- the widget

def _options(values, fmt="{:g}"):
    return [(fmt.format(v), v) for v in values]


class Playground:
    """The ipywidgets explorer. See the module docstring; display it as a cell's last expression.

    grid: a :class:`dsmlib.playground.PlaygroundGrid` (default: the packaged grid file).
    Initial slider values (grid values) may be given as keyword arguments.
    Attributes: ``widget`` (the ipywidgets box), ``figure`` (:class:`PlaygroundFigure`),
    ``image`` (the ``ipywidgets.Image`` showing it), ``view`` (the View on screen).
    """

    def __init__(self, grid=None, **initial):
        import ipywidgets as W

        self.grid = _pg.load_grid() if grid is None else grid
        if not isinstance(self.grid, _pg.PlaygroundGrid):
            raise TypeError(f"grid must be a PlaygroundGrid, got {type(self.grid).__name__}")
        cfg = self.grid.config
        default = dict(lr=_closest(cfg.lrs, 0.05), t=_closest(cfg.times, 0.05),
                       n=_closest(cfg.ns, 5), width=cfg.widths[-1], seed=cfg.seeds[0])
        start = {**default, **self._checked(initial)}
        style = {"description_width": "150px"}
        lay = W.Layout(width="440px")
        self.sliders = {
            "lr": W.SelectionSlider(options=_options(cfg.lrs), value=start["lr"],
                                    description="learning rate η", style=style, layout=lay),
            "t": W.SelectionSlider(options=_options(cfg.times), value=start["t"],
                                   description="noise level t", style=style, layout=lay),
            "n": W.SelectionSlider(options=_options(cfg.ns, "{:d}"), value=start["n"],
                                   description="training points n", style=style, layout=lay),
            "width": W.SelectionSlider(options=_options(cfg.widths, "{:d}"),
                                       value=start["width"], description="width m",
                                       style=style, layout=lay),
            "seed": W.SelectionSlider(options=_options(cfg.seeds, "{:d}"), value=start["seed"],
                                      description="data seed", style=style, layout=lay),
        }
        small = W.Layout(width="124px")
        sstyle = {"description_width": "34px"}
        self.custom = {
            "lr": W.BoundedFloatText(value=0.07, min=1e-4, max=10.0, step=0.01, description="η",
                                     style=sstyle, layout=small),
            "t": W.BoundedFloatText(value=start["t"], min=1e-3, max=5.0, step=0.01,
                                    description="t", style=sstyle, layout=small),
            "n": W.BoundedIntText(value=start["n"], min=2, max=200, description="n",
                                  style=sstyle, layout=small),
            "width": W.BoundedIntText(value=start["width"], min=1, max=4000, description="m",
                                      style=sstyle, layout=small),
            "seed": W.BoundedIntText(value=start["seed"], min=0, max=10 ** 6,
                                     description="seed", style=sstyle, layout=small),
        }
        self.button = W.Button(description="Train this setting", button_style="warning",
                               icon="play", layout=W.Layout(width="180px"),
                               tooltip="train the custom setting now (seconds to a minute)")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="",
                                      layout=W.Layout(width="300px", visibility="hidden"))
        self.status = W.HTML()
        # no margin: "100%" plus the default 2 px widget margins would stick out of the column
        self.image = W.Image(format="png", layout=W.Layout(width="100%", max_width="1000px",
                                                           height="auto", margin="0"))
        self.figure = PlaygroundFigure(blit=True)
        self.view = None
        self._trained = {}
        self._hold = False
        for s in self.sliders.values():
            s.observe(self._on_slider, names="value")
        self.button.on_click(self._on_train)
        controls = W.VBox([W.HTML("<b>Precomputed grid</b> (instant):"), *self.sliders.values()])
        custom = W.VBox([W.HTML("<b>Off the grid</b>: any values, trained when you press the "
                                "button (seconds to a minute)"),
                         W.HBox(list(self.custom.values())),
                         W.HBox([self.button, self.progress])])
        self.widget = W.VBox([controls, custom, self.status, self.image])
        self.update()

    # ------------------------------------------------------------------ state
    def setting(self) -> dict:
        """The current slider values: ``{"lr", "t", "n", "width", "seed"}``."""
        return {k: s.value for k, s in self.sliders.items()}

    def _checked(self, values: dict) -> dict:
        unknown = set(values) - set(_SETTING)
        if unknown:
            raise TypeError(f"unknown setting(s) {sorted(unknown)}; the sliders are {_SETTING}")
        out = {}
        for k, v in values.items():
            out[k] = self.grid.axis(k)[self.grid.index(k, v)]
        return out

    def select(self, **values):
        """Move sliders to grid values (e.g. ``select(lr=0.05, t=0.02)``) and redraw once.

        ``ValueError`` names the argument when a value is not on the grid (nothing moves then);
        ``TypeError`` for an unknown slider name or a non-number.
        """
        checked = self._checked(values)
        self._hold = True
        try:
            for k, v in checked.items():
                self.sliders[k].value = v
        finally:
            self._hold = False
        return self.update()

    def _on_slider(self, change):
        if not self._hold:
            self.update()

    def update(self):
        """Redraw the current slider setting from the grid. Returns its View."""
        view = self.grid.view(**self.setting())
        self.show(view)
        return view

    def show(self, view):
        """Draw any :class:`~dsmlib.playground.View` (e.g. one from ``train``)."""
        self.figure.draw(view)
        self.image.value = self.figure.png()
        self.view = view
        if view.source == "grid":
            self.status.value = ""
        return view

    # ------------------------------------------------------------------ off the grid
    def train(self, *, lr, t, n, width, seed, config=None):
        """Train one setting now (any values: see :func:`dsmlib.playground.train_view`), show it
        and return its View. Results are cached for the session."""
        key = (float(_positive(lr, "lr")), float(_positive(t, "t")), _int(n, "n", 2),
               _int(width, "width", 1), _int(seed, "seed", 0))
        if key in self._trained:
            return self._show_trained(self._trained[key])
        cfg = self.grid.config if config is None else config
        steps = _pg.steps_for(key[0], cfg.train_time)
        self.progress.max = steps
        self.progress.value = 0
        self.progress.layout.visibility = "visible"
        self.status.value = (f"training η={key[0]:g}, t={key[1]:g}, n={key[2]}, m={key[3]}, "
                             f"seed {key[4]}: {steps} SGD steps ...")

        def report(done, total):
            self.progress.max = total
            self.progress.value = done

        try:
            view = _pg.train_view(lr=key[0], t=key[1], n=key[2], width=key[3], seed=key[4],
                                  config=cfg, progress=report)
        finally:
            self.progress.layout.visibility = "hidden"
        self._trained[key] = view
        return self._show_trained(view)

    def _show_trained(self, view):
        self.show(view)
        self.status.value = (f"showing the custom setting ({view.source}); move a slider to "
                             f"return to the grid.")
        return view

    def _on_train(self, _button):
        values = {k: w.value for k, w in self.custom.items()}
        self.button.disabled = True
        try:
            self.train(**values)
        except (TypeError, ValueError) as exc:
            self.status.value = f"<span style='color:#b00'>Cannot train this setting: {exc}</span>"
        finally:
            self.button.disabled = False

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        s = self.setting()
        bundle["text/plain"] = "Playground(" + ", ".join(f"{k}={v}" for k, v in s.items()) + ")"
        return bundle

    def __repr__(self):
        return "Playground(" + ", ".join(f"{k}={v}" for k, v in self.setting().items()) + ")"


def _closest(values, target):
    return min(values, key=lambda v: abs(math.log(v / target)))


def _positive(x, name):
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive number, got {x!r}")
    return x


def _int(x, name, minimum):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


def playground(grid=None, **initial) -> Playground:
    """The playground explorer: ``dsmlib.widgets.playground()`` as a cell's last expression."""
    return Playground(grid, **initial)


# ---------------------------------------------------------------------------------- scrubbers

def scrubber(grid=None, *, over="lr", interval=900, dpi=80, **fixed):
    """A kernel-free scrubber: a matplotlib ``to_jshtml`` animation over one grid axis.

    over: ``"lr"`` (frames = learning rates) or ``"t"`` (frames = noise levels), or any other
    axis name. fixed: grid values of the other four axes (defaults: the playground's).
    Returns an ``IPython.display.HTML`` object (HTML with one PNG per frame and its own slider).
    """
    from IPython.display import HTML
    from matplotlib.animation import FuncAnimation

    grid = _pg.load_grid() if grid is None else grid
    if over not in _SETTING:
        raise ValueError(f"over must be one of {_SETTING}, got {over!r}")
    if over in fixed:
        raise TypeError(f"{over} is the animated axis; do not fix it")
    cfg = grid.config
    setting = dict(lr=_closest(cfg.lrs, 0.05), t=_closest(cfg.times, 0.05),
                   n=_closest(cfg.ns, 5), width=cfg.widths[-1], seed=cfg.seeds[0])
    unknown = set(fixed) - set(_SETTING)
    if unknown:
        raise TypeError(f"unknown setting(s) {sorted(unknown)}; the axes are {_SETTING}")
    for k, v in fixed.items():
        setting[k] = grid.axis(k)[grid.index(k, v)]
    views = []
    for value in grid.axis(over):
        setting[over] = value
        views.append(grid.view(**setting))
    figure = PlaygroundFigure(dpi=dpi)
    figure.draw(views[0])

    def frame(i):
        figure.draw(views[i])
        return ()

    anim = FuncAnimation(figure.fig, frame, frames=len(views), interval=interval, blit=False,
                         repeat=False)
    html = anim.to_jshtml(default_mode="once")
    return HTML(html)
